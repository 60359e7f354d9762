// Test doubles for lobby.js: a scriptable WebSocket, a manual clock and a quiet logger.
// Not a test file itself (node --test picks only *.test.js here).

import { identityFromKeyPair } from "../../workers/static/lobby.js";

/** The key and challenge of the test vector in docs/PROTOCOL.md. */
export const VECTOR = {
  seed: "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f",
  publicKey: "03a107bff3ce10be1d70dd18e74bc09967e4d6309ba50d5f1ddc8664125531b8",
  nonce: "f0e1d2c3b4a5968778695a4b3c2d1e0f00112233445566778899aabbccddeeff",
  signature:
    "bf097020b5fecefb08050a4c33a58a9e4bebf11a68cb87de81940197beeea72e" +
    "fb3a04ba3b758169ba8efa235b1f614cb0b595e47113e6fc4722c4517eb54b03",
};

/** Other users' keys: "aa…aa", "bb…bb" and so on. */
export const key = (char) => char.repeat(64);

const b64url = (hex) => Buffer.from(hex, "hex").toString("base64url");

/** The test vector's key pair, private key non-extractable, as an identity. */
export async function vectorIdentity() {
  const { subtle } = globalThis.crypto;
  const jwk = { kty: "OKP", crv: "Ed25519", x: b64url(VECTOR.publicKey) };
  const privateKey = await subtle.importKey("jwk", { ...jwk, d: b64url(VECTOR.seed) },
    { name: "Ed25519" }, false, ["sign"]);
  const publicKey = await subtle.importKey("jwk", jwk, { name: "Ed25519" }, true, ["verify"]);
  return identityFromKeyPair({ publicKey, privateKey });
}

/**
 * A WebSocket class whose instances the test drives as the server would. Each call
 * makes a class with its own list of sockets, so tests do not share state.
 */
export function fakeWebSocketClass() {
  const sockets = [];
  class FakeWebSocket {
    constructor(url) {
      this.url = url;
      /** Frames the client wrote, parsed. */
      this.sent = [];
      /** [code, reason] of each close() the client made. */
      this.closedWith = [];
      sockets.push(this);
    }
    send(text) {
      this.sent.push(JSON.parse(text));
    }
    close(code, reason) {
      this.closedWith.push([code, reason]);
    }
    /** The server writes a frame (an object, or raw text). */
    receive(frame) {
      this.onmessage({ data: typeof frame === "string" ? frame : JSON.stringify(frame) });
    }
    /** The connection ends with this close code. */
    drop(code, reason = "") {
      this.onclose({ code, reason });
    }
    /** Frames written so far of one type. */
    sentOfType(type) {
      return this.sent.filter((frame) => frame.type === type);
    }
  }
  return { FakeWebSocket, sockets };
}

/** setTimeout and clearTimeout that run only when the test says so. */
export function manualClock() {
  const timers = new Map();
  let nextId = 1;
  return {
    now: () => 1_000_000,
    setTimeout(callback, ms) {
      const id = nextId++;
      timers.set(id, { callback, ms });
      return id;
    },
    clearTimeout(id) {
      timers.delete(id);
    },
    /** The delays (ms) of the timers still pending. */
    pending() {
      return [...timers.values()].map(({ ms }) => ms);
    },
    /** Runs every pending timer. */
    fire() {
      const due = [...timers.values()];
      timers.clear();
      for (const { callback } of due) callback();
    },
  };
}

/** A logger that keeps its lines, by level. */
export function recordingLogger() {
  const lines = { info: [], warn: [], error: [] };
  return {
    lines,
    info: (text) => lines.info.push(text),
    warn: (text) => lines.warn.push(text),
    error: (text) => lines.error.push(text),
  };
}

/** Waits, without sleeping, until `predicate()` holds (WebCrypto signs off the thread). */
export async function until(predicate, what = "condition") {
  for (let turn = 0; turn < 10_000; turn += 1) {
    if (predicate()) return;
    await new Promise((resolve) => setImmediate(resolve));
  }
  throw new Error(`timed out waiting for ${what}`);
}

/** Records every event of the given types a target dispatches, as [type, detail]. */
export function recordEvents(target, types) {
  const events = [];
  for (const type of types) {
    target.addEventListener(type, (event) => events.push([type, event.detail]));
  }
  return events;
}
