// The shared test vectors (tests/vectors/*.json) against lobby.js. The Python core and
// the load generator pass the same files (tests/shared/test_vectors.py), so the two
// languages cannot disagree on the view's rules, the signed bytes or the reconnect
// policy.

import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { test } from "node:test";

import {
  LobbyError,
  LobbyView,
  applyLobbyFrame,
  authPayload,
  backoffDelay,
  reconnects,
} from "../../workers/static/lobby.js";
import { identityFromSeed } from "./fakes.js";

const load = (name) => JSON.parse(readFileSync(new URL(`../vectors/${name}`, import.meta.url)));
const VIEW = load("view.json").cases;
const AUTH = load("auth.json").cases;
const RECONNECT = load("reconnect.json");
const hex = (buffer) => Buffer.from(buffer).toString("hex");

test("the view vectors cover every outcome", () => {
  const outcomes = new Set(VIEW.flatMap((c) => c.results));
  assert.deepEqual([...outcomes].sort(), [
    "DuplicateUpdate",
    "InconsistentSnapshot",
    "InconsistentUpdate",
    "ProtocolError",
    "SequenceGap",
    "ok",
  ]);
});

for (const vector of VIEW) {
  test(`view: ${vector.name}`, () => {
    const view = new LobbyView();
    const results = [];
    for (const frame of vector.frames) {
      const before = { seq: view.seq, online: [...view.online].sort() };
      try {
        // Through the wire's text, as the client parses it.
        applyLobbyFrame(view, JSON.parse(JSON.stringify(frame)));
        results.push("ok");
      } catch (error) {
        if (!(error instanceof LobbyError)) throw error;
        results.push(error.name);
        assert.deepEqual({ seq: view.seq, online: [...view.online].sort() }, before);
      }
    }
    assert.deepEqual(results, vector.results);
    assert.deepEqual({ seq: view.seq, online: [...view.online].sort() }, vector.view);
  });
}

for (const vector of AUTH) {
  test(`auth: the key of seed ${vector.seed.slice(0, 8)}… signs the expected bytes`, async () => {
    const identity = await identityFromSeed(vector.seed);
    assert.equal(identity.publicKey, vector.publicKey);
    const payload = authPayload(vector.challenge.nonce);
    assert.equal(hex(payload), vector.payload);
    const signature = await crypto.subtle.sign({ name: "Ed25519" }, identity.privateKey, payload);
    assert.equal(hex(signature), vector.signature);
  });
}

test("reconnect: which closes are worth another connection", () => {
  for (const [code, expected] of Object.entries(RECONNECT.close_codes)) {
    assert.equal(reconnects(Number(code)), expected, `close ${code}`);
  }
});

test("reconnect: the backoff's delays", () => {
  for (const { attempt, jitter, initial, maximum, delay } of RECONNECT.backoff) {
    const got = backoffDelay(attempt, jitter, initial, maximum);
    assert.ok(Math.abs(got - delay) < 1e-12, `attempt ${attempt}: ${got} != ${delay}`);
  }
});
