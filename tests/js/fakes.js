// Test doubles for lobby.js: a scriptable WebSocket, a manual clock and a quiet logger.
// Not a test file itself (node --test picks only *.test.js here).

import assert from "node:assert/strict";
import { readFileSync } from "node:fs";

import { identityFromKeyPair } from "../../workers/static/lobby.js";

/**
 * The key and challenge of the worked example in docs/PROTOCOL.md: the first case of
 * tests/vectors/auth.json, which the Python tests read too.
 */
const WORKED_EXAMPLE = JSON.parse(
  readFileSync(new URL("../vectors/auth.json", import.meta.url)),
).cases[0];
export const VECTOR = {
  seed: WORKED_EXAMPLE.seed,
  publicKey: WORKED_EXAMPLE.publicKey,
  nonce: WORKED_EXAMPLE.challenge.nonce,
  signature: WORKED_EXAMPLE.signature,
};

/** Other users' keys: "aa…aa", "bb…bb" and so on. */
export const key = (char) => char.repeat(64);

const b64url = (hex) => Buffer.from(hex, "hex").toString("base64url");

/** The worked example's key pair, private key non-extractable, as an identity. */
export async function vectorIdentity() {
  const { subtle } = globalThis.crypto;
  const jwk = { kty: "OKP", crv: "Ed25519", x: b64url(VECTOR.publicKey) };
  const privateKey = await subtle.importKey("jwk", { ...jwk, d: b64url(VECTOR.seed) },
    { name: "Ed25519" }, false, ["sign"]);
  const publicKey = await subtle.importKey("jwk", jwk, { name: "Ed25519" }, true, ["verify"]);
  return identityFromKeyPair({ publicKey, privateKey });
}

/** PKCS #8 of an Ed25519 private key: this DER prefix, then the 32-byte seed. */
const PKCS8_ED25519 = "302e020100300506032b657004220420";

/**
 * The identity of a 32-byte seed (hex), its public key derived by WebCrypto from the
 * seed alone, private key non-extractable.
 */
export async function identityFromSeed(seed) {
  const { subtle } = globalThis.crypto;
  const der = Buffer.from(PKCS8_ED25519 + seed, "hex");
  const extractable = await subtle.importKey("pkcs8", der, { name: "Ed25519" }, true, ["sign"]);
  const { x } = await subtle.exportKey("jwk", extractable);
  const jwk = { kty: "OKP", crv: "Ed25519", x };
  const privateKey = await subtle.importKey("pkcs8", der, { name: "Ed25519" }, false, ["sign"]);
  const publicKey = await subtle.importKey("jwk", jwk, { name: "Ed25519" }, true, ["verify"]);
  return identityFromKeyPair({ publicKey, privateKey });
}

/**
 * A WebSocket class whose instances the test drives as the server would. Each call
 * makes a class with its own list of sockets, so tests do not share state.
 */
export function fakeWebSocketClass({ selects = [] } = {}) {
  const sockets = [];
  class FakeWebSocket {
    /** `selects`: the subprotocols this fake server selects, when a client offers one. */
    constructor(url, protocols = []) {
      this.url = url;
      this.protocols = protocols;
      this.protocol = protocols.find((name) => selects.includes(name)) ?? "";
      this.binaryType = "blob";
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
    /** The server writes a binary frame (bytes or hex), delivered as the client asked. */
    receiveBinary(frame) {
      const bytes = typeof frame === "string" ? Buffer.from(frame, "hex") : frame;
      assert.equal(this.binaryType, "arraybuffer", "binary frames need binaryType arraybuffer");
      this.onmessage({ data: new Uint8Array(bytes).buffer });
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

/**
 * Binary lobby frames of protocol version 2, as a server writes them (for tests; the
 * layouts of docs/PROTOCOL.md). An entry is `{ key, status = "online", data }`.
 */
const NAMED = { online: 0, away: 1, busy: 2 };
const u32 = (n) => [(n >>> 24) & 255, (n >>> 16) & 255, (n >>> 8) & 255, n & 255];
const u64 = (n) => [...u32(Math.floor(n / 2 ** 32)), ...u32(n % 2 ** 32)];
const utf8 = (text) => [...new TextEncoder().encode(text)];

function entryBytes({ key: hex, status = "online", data }) {
  const custom = !(status in NAMED);
  const flags = (custom ? 3 : NAMED[status]) | (data ? 0x80 : 0);
  const out = [...Buffer.from(hex, "hex"), flags];
  if (custom) out.push(utf8(status).length, ...utf8(status));
  if (data) out.push(utf8(JSON.stringify(data)).length, ...utf8(JSON.stringify(data)));
  return out;
}

const list = (entries) => [...u32(entries.length), ...entries.flatMap(entryBytes)];

export function snapshotV2(epoch, seq, entries, scope = "lobby", applied = 0) {
  const code = scope === "watch" ? 1 : 0;
  const head = [1, epoch.length, ...utf8(epoch), ...u64(seq), code, ...u32(applied)];
  return new Uint8Array([...head, ...list(entries)]);
}

export function updateV2(seq, prev, { joined = [], updated = [], left = [] } = {}) {
  const gone = left.flatMap((hex) => [...Buffer.from(hex, "hex")]);
  const body = [...list(joined), ...list(updated), ...u32(left.length), ...gone];
  return new Uint8Array([2, ...u64(seq), ...u64(prev), ...body]);
}
