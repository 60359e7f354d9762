// The shared test vectors of protocol version 2 (tests/vectors/auth_v2.json and
// frames_v2.json) against protocol_v2.js. The Python codec passes the same files
// (tests/shared/test_vectors_v2.py), so the two languages cannot disagree on them.

import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { test } from "node:test";

import { signV2 } from "../../workers/static/identity.js";
import { ProtocolError } from "../../workers/static/lobby_core.js";
import {
  BadServerUrl,
  checkRecord,
  compactData,
  decodeServerFrameV2,
  encodeAuthV2,
  encodeFollow,
  encodeSetRecord,
  serverIdentity,
  signedPayloadV2,
} from "../../workers/static/protocol_v2.js";
import { identityFromSeed } from "./fakes.js";

const load = (name) => JSON.parse(readFileSync(new URL(`../vectors/${name}`, import.meta.url)));
const AUTH = load("auth_v2.json");
const FRAMES = load("frames_v2.json");
const hex = (buffer) => Buffer.from(buffer).toString("hex");
const bytes = (text) => new Uint8Array(Buffer.from(text, "hex"));

test("identity: every URL's canonical form, and canonical forms are fixed points", () => {
  for (const { url, identity } of AUTH.identities) {
    assert.equal(serverIdentity(url), identity, url);
    assert.equal(serverIdentity(identity), identity, identity);
  }
});

test("identity: URLs that have none are refused, naming the URL", () => {
  for (const url of AUTH.refused) {
    assert.throws(() => serverIdentity(url), (error) => {
      assert.ok(error instanceof BadServerUrl, `${url}: ${error}`);
      assert.match(error.message, /server URL/);
      return true;
    });
  }
});

for (const vector of AUTH.cases) {
  test(`auth: seed ${vector.seed.slice(0, 8)}… signs for ${vector.url}`, async () => {
    const identity = await identityFromSeed(vector.seed);
    assert.equal(identity.publicKey, vector.publicKey);
    const server = serverIdentity(vector.url);
    assert.equal(server, vector.identity);
    const challenge = decodeServerFrameV2(JSON.stringify(vector.challenge));
    assert.equal(challenge.version, 2);
    const payload = signedPayloadV2(server, challenge.nonce);
    assert.equal(hex(payload), vector.payload);
    const signature = await signV2(identity.privateKey, server, challenge.nonce);
    assert.equal(signature, vector.signature);
    const { publicKey } = identity.keyPair;
    const verify = (data) =>
      crypto.subtle.verify({ name: "Ed25519" }, publicKey, bytes(signature), data);
    assert.ok(await verify(payload));
    // Bound to the server: the same signature proves nothing for another identity.
    assert.ok(!(await verify(signedPayloadV2("wss://evil.example:443/ws", challenge.nonce))));
    const { record, follow, resume } = vector.auth;
    const publicKeyHex = vector.publicKey;
    const fields = { publicKey: publicKeyHex, signature, server, record, follow, resume };
    const frame = encodeAuthV2(fields);
    assert.deepEqual(JSON.parse(frame), vector.auth);
  });
}

for (const vector of FRAMES.frames) {
  test(`frame: ${vector.name}`, () => {
    if (vector.text !== undefined) {
      assert.deepEqual(decodeServerFrameV2(vector.text), vector.frame);
      return;
    }
    const raw = bytes(vector.hex);
    assert.deepEqual(decodeServerFrameV2(raw), vector.frame);
    const buffer = raw.buffer.slice(raw.byteOffset, raw.byteOffset + raw.length);
    assert.deepEqual(decodeServerFrameV2(buffer), vector.frame);
    // A view into a larger buffer, as a WebSocket library may hand over.
    const padded = new Uint8Array(raw.length + 7);
    padded.set(raw, 3);
    assert.deepEqual(decodeServerFrameV2(padded.subarray(3, 3 + raw.length)), vector.frame);
  });
}

test("malformed frames are refused with a ProtocolError", () => {
  for (const { name, hex: frame } of FRAMES.malformed) {
    assert.throws(() => decodeServerFrameV2(bytes(frame)), ProtocolError, name);
  }
  for (const { name, text } of FRAMES.malformed_text) {
    assert.throws(() => decodeServerFrameV2(text), ProtocolError, name);
  }
});

test("records: the bounds of status and data", () => {
  for (const { name, record, valid, status, compact } of FRAMES.records) {
    assert.equal(checkRecord(record) === null, valid, name);
    if (valid) {
      assert.equal(record.status ?? "online", status, name);
      assert.equal(compactData(record.data ?? {}), compact, name);
    }
  }
});

test("client frames: set_record writes only the fields given; follow its scope", () => {
  assert.deepEqual(JSON.parse(encodeSetRecord({ status: "away" })), {
    type: "set_record",
    status: "away",
  });
  assert.deepEqual(JSON.parse(encodeFollow({ scope: "count", keys: ["x"] })), {
    type: "follow",
    scope: "count",
  });
});

test("the decoder throws only ProtocolError, whatever the bytes", () => {
  // A fixed-seed generator: damaged copies of every vector frame, and random bytes.
  let state = 0x2545f491;
  const random = (n) => {
    state ^= state << 13;
    state ^= state >>> 17;
    state ^= state << 5;
    return (state >>> 0) % n;
  };
  const frames = FRAMES.frames.filter((v) => v.hex).map((v) => bytes(v.hex));
  for (let i = 0; i < 3000; i++) {
    let frame;
    if (i % 3 === 0) {
      frame = Uint8Array.from({ length: random(80) }, () => random(256));
    } else {
      frame = frames[random(frames.length)].slice();
      if (i % 3 === 1) frame = frame.subarray(0, random(frame.length + 1));
      else if (frame.length) frame[random(frame.length)] = random(256);
    }
    try {
      decodeServerFrameV2(frame);
    } catch (error) {
      if (!(error instanceof ProtocolError)) throw new Error(`${hex(frame)}: ${error}`);
    }
  }
  for (const input of [null, 7, {}, "", "[]", '{"type":7}', '{"type":"__proto__"}']) {
    assert.throws(() => decodeServerFrameV2(input), ProtocolError, String(input));
  }
});
