// Identities: Ed25519 key pairs made through WebCrypto, and what happens without it.

import assert from "node:assert/strict";
import { test } from "node:test";

import {
  Ed25519Unsupported,
  LobbyClient,
  authPayload,
  identityFromKeyPair,
  loadOrCreateIdentity,
} from "../../workers/static/lobby.js";
import { VECTOR, fakeWebSocketClass, recordingLogger, vectorIdentity } from "./fakes.js";

/** Runs `body` with globalThis.crypto replaced, as in an insecure browser context. */
async function withCrypto(replacement, body) {
  const saved = Object.getOwnPropertyDescriptor(globalThis, "crypto");
  Object.defineProperty(globalThis, "crypto", { value: replacement, configurable: true });
  try {
    return await body();
  } finally {
    Object.defineProperty(globalThis, "crypto", saved);
  }
}

const SAYS_WHAT_TO_DO = /Chromium, Firefox or Safari.*https.*localhost/s;

test("a memory identity is a fresh Ed25519 pair with a non-extractable private key", async () => {
  const first = await loadOrCreateIdentity({ storage: "memory" });
  const second = await loadOrCreateIdentity({ storage: "memory" });
  assert.match(first.publicKey, /^[0-9a-f]{64}$/);
  assert.notEqual(first.publicKey, second.publicKey);
  assert.equal(first.privateKey.extractable, false);
  assert.equal(first.persisted, false);
});

test("without IndexedDB (Node) the default storage makes a fresh identity", async () => {
  const first = await loadOrCreateIdentity();
  const second = await loadOrCreateIdentity();
  assert.notEqual(first.publicKey, second.publicKey);
  assert.equal(first.persisted, false);
});

test("an unknown storage is refused", async () => {
  await assert.rejects(loadOrCreateIdentity({ storage: "disk" }), TypeError);
});

test("identityFromKeyPair takes the app's own pair and names its public key", async () => {
  const identity = await vectorIdentity();
  assert.equal(identity.publicKey, VECTOR.publicKey);
  await assert.rejects(identityFromKeyPair({}), TypeError);
});

test("the signed payload is the protocol's 46 bytes", () => {
  assert.equal(
    Buffer.from(authPayload(VECTOR.nonce)).toString("hex"),
    "6c6f6262792d617574682d76313a" + VECTOR.nonce,
  );
});

test("without crypto.subtle (an insecure context) key creation says what to do", async () => {
  await withCrypto({ getRandomValues: (a) => a }, async () => {
    const error = await loadOrCreateIdentity({ storage: "memory" }).catch((e) => e);
    assert.ok(error instanceof Ed25519Unsupported, String(error));
    assert.match(error.message, SAYS_WHAT_TO_DO);
    assert.match(error.message, /secure context/);
  });
});

test("a WebCrypto without Ed25519 gives Ed25519Unsupported", async () => {
  const notSupported = () => Promise.reject(new DOMException("Unrecognized name", "NotSupportedError"));
  const subtle = { generateKey: notSupported };
  await withCrypto({ subtle }, async () => {
    const error = await loadOrCreateIdentity({ storage: "memory" }).catch((e) => e);
    assert.ok(error instanceof Ed25519Unsupported, String(error));
    assert.match(error.message, SAYS_WHAT_TO_DO);
    assert.equal(error.cause.name, "NotSupportedError");
  });
});

test("signing without crypto.subtle stops the client with Ed25519Unsupported", async () => {
  const { FakeWebSocket, sockets } = fakeWebSocketClass();
  const client = new LobbyClient("ws://lobby/ws", {
    identity: await vectorIdentity(),
    WebSocket: FakeWebSocket,
    logger: recordingLogger(),
  });
  const connected = client.connect();
  await withCrypto({}, async () => {
    sockets[0].receive({ type: "challenge", version: 1, nonce: VECTOR.nonce });
    await assert.rejects(connected, Ed25519Unsupported);
  });
  assert.equal(client.status, "closed");
  assert.deepEqual(sockets[0].sent, []);
});
