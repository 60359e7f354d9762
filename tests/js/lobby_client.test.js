// Unit tests for workers/static/lobby.js, the browser and Node client of the lobby
// (docs/PROTOCOL.md). Run them with `node --test tests/js/` (Node 20+, no packages).
// This file drives a LobbyClient through a fake WebSocket (tests/js/fakes.js) whose
// tests play the server's side frame by frame; timers and the backoff's random() are
// injected, so reconnect delays are exact and nothing sleeps. Signatures are real
// WebCrypto Ed25519, checked against the protocol's test vector.
// lobby_view.test.js covers the lobby's rules on their own, identity.test.js the key
// pairs and what happens without Ed25519.

import assert from "node:assert/strict";
import { test } from "node:test";

import {
  AuthFailed,
  ConnectionLost,
  DuplicateUpdate,
  InconsistentSnapshot,
  InconsistentUpdate,
  LobbyClient,
  ProtocolError,
  SequenceGap,
  ServerError,
} from "../../workers/static/lobby.js";
import {
  VECTOR,
  fakeWebSocketClass,
  key,
  manualClock,
  recordEvents,
  recordingLogger,
  until,
  vectorIdentity,
} from "./fakes.js";

const URL = "ws://lobby.test/ws";
const ME = VECTOR.publicKey;
const A = key("a");
const B = key("b");
const C = key("c");

const users = (keys) => keys.map((publicKey) => ({ publicKey }));
const challenge = (nonce = VECTOR.nonce) => ({ type: "challenge", version: 1, nonce });
const snapshot = (seq, keys) => ({ type: "lobby_snapshot", seq, users: users(keys) });
const update = (seq, joined, left) => ({
  type: "lobby_update",
  seq,
  joined: users(joined),
  left: users(left),
});

/** A client with a fake socket class, a manual clock, random() = 0.5 unless given. */
async function setup(options = {}) {
  const { FakeWebSocket, sockets } = fakeWebSocketClass();
  const clock = manualClock();
  const logger = recordingLogger();
  const client = new LobbyClient(URL, {
    identity: await vectorIdentity(),
    WebSocket: FakeWebSocket,
    random: () => 0.5,
    now: clock.now,
    setTimeout: clock.setTimeout,
    clearTimeout: clock.clearTimeout,
    logger,
    ...options,
  });
  return { client, sockets, clock, logger };
}

/** Plays the server's side of a successful handshake on the newest socket. */
async function handshake({ sockets }, { seq = 10, others = [A] } = {}) {
  const ws = sockets.at(-1);
  ws.receive(challenge());
  await until(() => ws.sentOfType("auth").length === 1, "the auth frame");
  ws.receive({ type: "auth_ok", publicKey: ME });
  ws.receive(snapshot(seq, [ME, ...others]));
  return ws;
}

/** A client that is online, with the socket that got it there. */
async function online(options) {
  const context = await setup(options);
  const connected = context.client.connect();
  const ws = await handshake(context);
  await connected;
  return { ...context, ws };
}

const online_ = (client) => [...client.view.online].sort();

// -- Authentication -------------------------------------------------------------

test("the auth signs 'lobby-auth-v1:' + nonce bytes: the protocol's test vector", async () => {
  const { client, sockets } = await setup();
  client.connect();
  const [ws] = sockets;
  assert.equal(ws.url, URL);
  ws.receive(challenge());
  await until(() => ws.sent.length === 1);
  const [auth] = ws.sent;
  assert.deepEqual(auth, { type: "auth", publicKey: ME, signature: VECTOR.signature });

  // And independently of the vector: the signature verifies over exactly those bytes.
  const payload = Buffer.concat([Buffer.from("lobby-auth-v1:"), Buffer.from(VECTOR.nonce, "hex")]);
  const publicKey = await crypto.subtle.importKey(
    "raw", Buffer.from(ME, "hex"), { name: "Ed25519" }, false, ["verify"]);
  const signature = Buffer.from(auth.signature, "hex");
  assert.ok(await crypto.subtle.verify({ name: "Ed25519" }, publicKey, signature, payload));
});

test("connect() resolves once auth_ok and the first snapshot (listing us) came", async () => {
  const { client, sockets } = await setup();
  const statuses = recordEvents(client, ["status"]);
  let resolved = false;
  const connected = client.connect().then(() => (resolved = true));
  assert.equal(client.status, "connecting");
  const [ws] = sockets;
  ws.receive(challenge());
  await until(() => ws.sent.length === 1);
  ws.receive({ type: "auth_ok", publicKey: ME });
  await new Promise((resolve) => setImmediate(resolve));
  assert.equal(resolved, false);
  assert.equal(client.status, "connecting");
  ws.receive(snapshot(10, [A, ME]));
  await connected;
  assert.equal(client.status, "online");
  assert.equal(client.publicKey, ME);
  assert.equal(client.view.seq, 10);
  assert.deepEqual(statuses.map(([, detail]) => detail.status), ["connecting", "online"]);
});

test("a challenge that is not version 1 with a 64-hex nonce stops the client", async (t) => {
  const bad = {
    "version 2": { type: "challenge", version: 2, nonce: VECTOR.nonce },
    "version as a string": { type: "challenge", version: "1", nonce: VECTOR.nonce },
    "a short nonce": challenge(VECTOR.nonce.slice(2)),
    "a nonce that is not hex": challenge("zz" + VECTOR.nonce.slice(2)),
    "no nonce": { type: "challenge", version: 1 },
  };
  for (const [name, frame] of Object.entries(bad)) {
    await t.test(name, async () => {
      const { client, sockets, clock } = await setup();
      const events = recordEvents(client, ["error", "status"]);
      const connected = client.connect();
      sockets[0].receive(frame);
      await assert.rejects(connected, ProtocolError);
      assert.equal(client.status, "closed");
      assert.deepEqual(sockets[0].sent, []);
      assert.deepEqual(sockets[0].closedWith, [[1000, undefined]]);
      assert.deepEqual(clock.pending(), [], "no reconnect");
      assert.ok(events.some(([type, detail]) => type === "error" && detail.error instanceof ProtocolError));
    });
  }
});

test("an auth_ok that names another key stops the client", async () => {
  const { client, sockets, clock } = await setup();
  const connected = client.connect();
  sockets[0].receive(challenge());
  await until(() => sockets[0].sent.length === 1);
  sockets[0].receive({ type: "auth_ok", publicKey: A });
  await assert.rejects(connected, ProtocolError);
  assert.equal(client.status, "closed");
  assert.deepEqual(clock.pending(), []);
});

test("auth_failed then 4001: status closed, connect() rejects, no reconnect", async () => {
  const { client, sockets, clock } = await setup();
  const events = recordEvents(client, ["status"]);
  const connected = client.connect();
  sockets[0].receive(challenge());
  await until(() => sockets[0].sent.length === 1);
  sockets[0].receive({ type: "auth_failed", reason: "invalid_signature" });
  sockets[0].drop(4001, "auth_failed");
  const error = await connected.catch((e) => e);
  assert.ok(error instanceof AuthFailed);
  assert.equal(error.reason, "invalid_signature");
  assert.equal(client.status, "closed");
  assert.deepEqual(clock.pending(), []);
  assert.deepEqual(events.at(-1), [
    "status",
    { status: "closed", code: 4001, reason: "authentication failed (invalid_signature)", retryIn: null, retryAt: null },
  ]);
});

// -- Pipelining -----------------------------------------------------------------

test("a send right after connect() is written behind the auth, before auth_ok", async () => {
  const { client, sockets } = await setup();
  const connected = client.connect();
  const result = client.send(B, "hello", { id: "m-1" });
  client.getLobby();
  const [ws] = sockets;
  assert.deepEqual(ws.sent, [], "nothing may precede the auth");
  ws.receive(challenge());
  await until(() => ws.sent.length === 3);
  assert.deepEqual(ws.sent.map((frame) => frame.type), ["auth", "send", "get_lobby"]);
  assert.deepEqual(ws.sent[1], { type: "send", to: B, id: "m-1", body: "hello" });

  ws.receive({ type: "auth_ok", publicKey: ME });
  ws.receive(snapshot(3, [ME, B]));
  await connected;
  ws.receive(snapshot(3, [ME, B])); // the answer to the pipelined get_lobby
  ws.receive({ type: "send_result", id: "m-1", status: "delivered" });
  assert.deepEqual(await result, { id: "m-1", status: "delivered" });
});

test("at most 16 frames go before auth_ok; the rest follow it, in order", async () => {
  const { client, sockets } = await setup();
  client.connect();
  const ids = Array.from({ length: 20 }, (_, i) => `m-${i}`);
  for (const id of ids) client.send(B, "x", { id }).catch(() => {});
  const [ws] = sockets;
  ws.receive(challenge());
  await until(() => ws.sent.length > 0);
  assert.equal(ws.sent.length, 1 + 16);
  ws.receive({ type: "auth_ok", publicKey: ME });
  assert.deepEqual(ws.sentOfType("send").map((frame) => frame.id), ids);
});

// -- Events ---------------------------------------------------------------------

test("sync, join, leave, update and message events", async () => {
  const { client, ws } = await online();
  const events = recordEvents(client, ["sync", "join", "leave", "update", "message"]);
  ws.receive(snapshot(20, [C, ME, A]));
  ws.receive(update(21, [B], []));
  ws.receive(update(22, [A], [A, C])); // A reconnected, C left
  ws.receive({ type: "message", from: B, id: "x-1", body: "<b>hi</b>" });
  assert.deepEqual(events, [
    ["sync", { seq: 20, online: [ME, A, C] }],
    ["join", { key: B, seq: 21 }],
    ["update", { seq: 21, joined: [B], left: [] }],
    ["leave", { key: A, seq: 22 }],
    ["leave", { key: C, seq: 22 }],
    ["join", { key: A, seq: 22 }],
    ["update", { seq: 22, joined: [A], left: [A, C] }],
    ["message", { from: B, id: "x-1", body: "<b>hi</b>" }],
  ]);
  assert.deepEqual(online_(client), [ME, A, B]);
});

test("send results are matched by id, in any order; ids default to 32 hex", async () => {
  const { client, ws } = await online();
  const first = client.send(A, "one");
  const second = client.send(B, "two", { id: "mine" });
  const [sentFirst] = ws.sentOfType("send");
  assert.match(sentFirst.id, /^[0-9a-f]{32}$/);
  ws.receive({ type: "send_result", id: "mine", status: "rejected", reason: "rate_limited" });
  ws.receive({ type: "send_result", id: sentFirst.id, status: "offline" });
  assert.deepEqual(await second, { id: "mine", status: "rejected", reason: "rate_limited" });
  assert.deepEqual(await first, { id: sentFirst.id, status: "offline" });
});

test("sends the server could never answer are refused before they are written", async () => {
  const { client, ws } = await online();
  await assert.rejects(client.send(A, "x", { id: "" }), TypeError);
  await assert.rejects(client.send(A, "x", { id: "i".repeat(65) }), TypeError);
  await assert.rejects(client.send(A, "\ud800"), TypeError);
  await assert.rejects(client.send(A, 42), TypeError);
  client.send(A, "x", { id: "same" });
  await assert.rejects(client.send(A, "y", { id: "same" }), TypeError);
  assert.equal(ws.sentOfType("send").length, 1);
});

test("a frame that breaks the protocol, and the server's error frame, are reported", async () => {
  const { client, ws, logger } = await online();
  const events = recordEvents(client, ["error"]);
  ws.receive("not json");
  ws.receive({ type: "surprise" });
  ws.receive({ type: "error", code: "rate_limited", message: "slow down" });
  const errors = events.map(([, detail]) => detail.error);
  assert.ok(errors[0] instanceof ProtocolError && errors[1] instanceof ProtocolError);
  assert.ok(errors[2] instanceof ServerError);
  assert.equal(errors[2].code, "rate_limited");
  assert.equal(logger.lines.warn.length, 3);
  assert.equal(client.status, "online");
});

// -- Continuity -----------------------------------------------------------------

test("a refused update asks for one snapshot and keeps the view right", async (t) => {
  const refusals = {
    "a gap": [update(13, [B], []), SequenceGap],
    "a duplicate": [update(10, [B], []), DuplicateUpdate],
    "an inconsistent update": [update(11, [], [C]), InconsistentUpdate],
    "a malformed update": [{ type: "lobby_update", seq: 11, joined: [{}], left: [] }, ProtocolError],
  };
  for (const [name, [bad, ErrorClass]] of Object.entries(refusals)) {
    await t.test(name, async () => {
      const { client, ws, logger } = await online();
      const events = recordEvents(client, ["error", "join", "leave"]);
      ws.receive(bad);
      ws.receive(update(11, [B], [])); // would fit the view, but continuity is broken
      ws.receive(update(14, [C], []));
      ws.receive({ type: "lobby_snapshot", seq: 12, users: "everyone" }); // not one either
      assert.equal(ws.sentOfType("get_lobby").length, 1, "one get_lobby until the snapshot");
      assert.deepEqual(online_(client), [ME, A]);
      assert.equal(client.view.seq, 10);
      assert.deepEqual(events.map(([type]) => type), ["error", "error"], "no join or leave");
      assert.ok(events[0][1].error instanceof ErrorClass);
      assert.ok(events[1][1].error instanceof ProtocolError);
      assert.match(logger.lines.warn.join("\n"), /resync/);

      ws.receive(snapshot(40, [ME, C]));
      ws.receive(update(41, [B], [C]));
      assert.deepEqual(online_(client), [ME, B]);
      ws.receive(update(43, [A], []));
      assert.equal(ws.sentOfType("get_lobby").length, 2, "a new break asks again");
    });
  }
});

test("a snapshot that lists a key twice is refused whole and a fresh one asked for", async () => {
  const { client, ws } = await online();
  const events = recordEvents(client, ["error", "sync"]);
  ws.receive(snapshot(20, [ME, B, B.toUpperCase()]));
  assert.deepEqual(online_(client), [ME, A]);
  assert.equal(client.view.seq, 10);
  assert.deepEqual(events.map(([type]) => type), ["error"], "no sync");
  assert.ok(events[0][1].error instanceof InconsistentSnapshot);
  assert.equal(ws.sentOfType("get_lobby").length, 1);
  ws.receive(update(21, [C], [])); // numbered from the refused snapshot: ignored
  assert.deepEqual(online_(client), [ME, A]);
  ws.receive(snapshot(21, [ME, B, C]));
  assert.deepEqual(online_(client), [ME, B, C]);
});

test("a resync's get_lobby refused as rate_limited is asked again a second later", async () => {
  const { ws, clock } = await online();
  ws.receive(update(12, [B], []));
  ws.receive({ type: "error", code: "rate_limited", message: "slow down" });
  assert.equal(ws.sentOfType("get_lobby").length, 1);
  assert.deepEqual(clock.pending(), [1000]);
  clock.fire();
  assert.equal(ws.sentOfType("get_lobby").length, 2);
});

test("a listener that closes the client on sync keeps it closed", async () => {
  const { client, sockets } = await setup();
  client.addEventListener("sync", () => client.close());
  const connected = client.connect();
  await handshake({ sockets });
  await assert.rejects(connected, ConnectionLost);
  assert.equal(client.status, "closed");
});

// -- Reconnecting ---------------------------------------------------------------

test("drops reconnect with exponential backoff and full jitter, reset once online", async () => {
  const jitter = [0.5, 0.25, 0.5, 0.75, 0.5, 0.5];
  const { client, sockets, clock, ws } = await online({
    random: () => jitter.shift(),
    backoff: { initial: 0.5, max: 4 },
  });
  const statuses = recordEvents(client, ["status"]);
  // delay = random() * min(max, initial * 2**attempt), attempt counting failures.
  const expected = [0.5 * 0.5, 0.25 * 1, 0.5 * 2, 0.75 * 4, 0.5 * 4];
  ws.drop(1006);
  for (const [attempt, retryIn] of expected.entries()) {
    assert.equal(client.status, "reconnecting");
    assert.deepEqual(clock.pending(), [retryIn * 1000], `attempt ${attempt}`);
    assert.deepEqual(statuses.at(-1)[1], {
      status: "reconnecting", code: 1006, reason: "", retryIn, retryAt: clock.now() + retryIn * 1000,
    });
    clock.fire();
    assert.equal(client.status, "connecting");
    if (attempt < expected.length - 1) sockets.at(-1).drop(1006); // the attempt fails
  }
  const again = await handshake({ sockets });
  assert.equal(client.status, "online");
  assert.equal(again.sentOfType("auth")[0].publicKey, ME, "the same identity");
  again.drop(1006);
  assert.deepEqual(clock.pending(), [0.5 * 0.5 * 1000], "attempts start again from 0");
});

test("every close code but 4001, 4002 and 4006 reconnects; rule-breaking ones warn", async (t) => {
  const codes = { 1001: "info", 1006: "info", 1011: "info", 1013: "info",
    1007: "warn", 1008: "warn", 1009: "warn", 4003: "warn", 4005: "warn" };
  for (const [code, level] of Object.entries(codes)) {
    await t.test(code, async () => {
      const { client, clock, ws, logger } = await online();
      ws.drop(Number(code), "why");
      assert.equal(client.status, "reconnecting");
      assert.equal(clock.pending().length, 1);
      assert.match(logger.lines[level].at(-1), new RegExp(`closed with ${code} \\(why\\)`));
    });
  }
});

test("a refusal before the challenge (1013) reconnects too", async () => {
  const { client, sockets, clock } = await setup();
  const connected = client.connect();
  sockets[0].drop(1013, "try_again_later");
  assert.equal(client.status, "reconnecting");
  clock.fire();
  await handshake({ sockets });
  await connected;
  assert.equal(sockets.length, 2);
});

test("4002: status replaced, and no reconnect", async () => {
  const { client, clock, ws } = await online();
  const statuses = recordEvents(client, ["status"]);
  ws.drop(4002, "session_replaced");
  assert.equal(client.status, "replaced");
  assert.deepEqual(clock.pending(), []);
  const [, detail] = statuses.at(-1);
  assert.equal(detail.code, 4002);
  assert.match(detail.reason, /opened elsewhere/);
  await assert.rejects(client.send(A, "x"), ConnectionLost);
});

test("4006 (kicked): status closed, and no reconnect", async () => {
  const { client, clock, ws, logger } = await online();
  ws.drop(4006, "kicked");
  assert.equal(client.status, "closed");
  assert.deepEqual(clock.pending(), []);
  assert.match(logger.lines.error.at(-1), /closed with 4006 \(kicked\); not reconnecting/);
});

test("4002 before online rejects connect(); connect() again starts anew", async () => {
  const { client, sockets } = await setup();
  const connected = client.connect();
  sockets[0].drop(4002, "session_replaced");
  await assert.rejects(connected, ConnectionLost);
  const again = client.connect();
  assert.equal(sockets.length, 2);
  await handshake({ sockets });
  await again;
});

test("close() closes with 1000 for good", async () => {
  const { client, clock, ws } = await online();
  client.close();
  assert.equal(client.status, "closed");
  assert.deepEqual(ws.closedWith, [[1000, undefined]]);
  ws.drop(1000); // the socket's own close event comes later: it changes nothing
  assert.equal(client.status, "closed");
  assert.deepEqual(clock.pending(), []);
});

test("close() while waiting to reconnect cancels the attempt", async () => {
  const { client, sockets, clock, ws } = await online();
  ws.drop(1006);
  client.close();
  assert.equal(client.status, "closed");
  assert.deepEqual(clock.pending(), []);
  assert.equal(sockets.length, 1);
});

// -- Sends without a connection -------------------------------------------------

test("sends awaiting results are rejected with ConnectionLost when the connection drops", async () => {
  const { client, ws } = await online();
  const pending = [client.send(A, "one"), client.send(B, "two")];
  ws.drop(1006);
  for (const send of pending) {
    const error = await send.catch((e) => e);
    assert.ok(error instanceof ConnectionLost);
    assert.equal(error.code, 1006);
    assert.match(error.message, /may or may not have been delivered/);
  }
});

test("a send while not connected is rejected at once", async () => {
  const { client, ws } = await online();
  ws.drop(1006);
  await assert.rejects(client.send(A, "x"), ConnectionLost);
  assert.throws(() => client.getLobby(), ConnectionLost);
  client.close();
  await assert.rejects(client.send(A, "x"), ConnectionLost);
  const never = await setup();
  await assert.rejects(never.client.send(A, "x"), /not connected \(status closed\)/);
});
