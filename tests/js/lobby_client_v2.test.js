// lobby.js in protocol version 2 ({ version: 2 }), driven through the fake WebSocket
// (tests/js/fakes.js) that selects the subprotocol presence.v2 and writes binary lobby
// frames. Timers and random() are injected: nothing sleeps. Signatures are real
// WebCrypto Ed25519, verified over the v2 payload bound to the URL's server identity.

import assert from "node:assert/strict";
import { test } from "node:test";

import {
  LobbyClient,
  NotVersion2,
  ProtocolError,
  RecordView,
  SequenceGap,
} from "../../workers/static/lobby.js";
import { decodeServerFrameV2, signedPayloadV2 } from "../../workers/static/protocol_v2.js";
import {
  VECTOR,
  fakeWebSocketClass,
  key,
  manualClock,
  recordEvents,
  recordingLogger,
  snapshotV2,
  until,
  updateV2,
  vectorIdentity,
} from "./fakes.js";

const URL = "wss://Lobby.Example/ws";
const SERVER = "wss://lobby.example:443/ws";
const ME = VECTOR.publicKey;
const A = key("a");
const B = key("b");
const challenge = { type: "challenge", version: 2, nonce: VECTOR.nonce };
const authOk = (seq, resumed = false) => ({
  type: "auth_ok",
  publicKey: ME,
  epoch: "e1",
  seq,
  resumed,
});

async function setup(options = {}, selects = ["presence.v2"]) {
  const { FakeWebSocket, sockets } = fakeWebSocketClass({ selects });
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
    version: 2,
    ...options,
  });
  return { client, sockets, clock, logger };
}

/** Plays a v2 server's handshake on the newest socket; returns it and the auth. */
async function handshake(sockets, first = snapshotV2("e1", 10, [{ key: ME }, { key: A }])) {
  const ws = sockets.at(-1);
  ws.receive(challenge);
  await until(() => ws.sentOfType("auth").length === 1, "the auth frame");
  const [auth] = ws.sentOfType("auth");
  ws.receive(authOk(10, auth.resume !== undefined));
  if (first instanceof Uint8Array) ws.receiveBinary(first);
  else if (first) ws.receive(first);
  return { ws, auth };
}

test("fakes: the test encoder writes frames the codec reads back", () => {
  const data = { name: "Ada" };
  const snap = decodeServerFrameV2(
    snapshotV2("e1", 7, [{ key: A, status: "in a call", data }], "watch"),
  );
  assert.deepEqual(snap, {
    type: "snapshot",
    epoch: "e1",
    seq: 7,
    scope: "watch",
    applied: 0,
    entries: [{ key: A, status: "in a call", data }],
  });
  const update = decodeServerFrameV2(
    updateV2(9, 7, { updated: [{ key: A, status: "away" }], left: [B] }),
  );
  assert.deepEqual(update, {
    type: "update",
    seq: 9,
    prev: 7,
    joined: [],
    updated: [{ key: A, status: "away", data: {} }],
    left: [B],
  });
});

test("v2: offers presence.v2, signs for the URL's server identity, keeps records", async () => {
  const { client, sockets } = await setup({ record: { status: "busy", data: { name: "Me" } } });
  const events = recordEvents(client, ["sync", "join", "leave", "update"]);
  const connected = client.connect();
  const [ws0] = sockets;
  assert.deepEqual(ws0.protocols, ["presence.v2"]);
  assert.equal(ws0.binaryType, "arraybuffer");
  const { ws, auth } = await handshake(sockets);
  await connected;
  assert.equal(auth.server, SERVER);
  assert.deepEqual(auth.record, { status: "busy", data: { name: "Me" } });
  assert.equal(auth.follow, undefined);
  const publicKey = await crypto.subtle.importKey(
    "raw",
    Buffer.from(ME, "hex"),
    { name: "Ed25519" },
    false,
    ["verify"],
  );
  const payload = signedPayloadV2(SERVER, VECTOR.nonce);
  assert.ok(
    await crypto.subtle.verify(
      { name: "Ed25519" },
      publicKey,
      Buffer.from(auth.signature, "hex"),
      payload,
    ),
  );

  assert.ok(client.view instanceof RecordView);
  assert.equal(client.status, "online");
  ws.receiveBinary(
    updateV2(11, 10, {
      joined: [{ key: B, data: { name: "Bo" } }],
      updated: [{ key: A, status: "away" }],
    }),
  );
  assert.deepEqual(client.view.records.get(B), { status: "online", data: { name: "Bo" } });
  assert.deepEqual(client.view.records.get(A), { status: "away", data: {} });
  assert.deepEqual(
    events.map(([type]) => type),
    ["sync", "join", "update"],
  );
  assert.deepEqual(events[2][1], { seq: 11, joined: [B], left: [], updated: [A] });

  client.setRecord({ status: "away" });
  client.follow({ scope: "watch", keys: [A.toUpperCase()] });
  client.watch([B]);
  client.unwatch([A]);
  client.follow({ scope: "count" });
  assert.deepEqual(ws.sent.slice(1), [
    { type: "set_record", status: "away" },
    { type: "follow", scope: "watch", keys: [A] },
    { type: "watch", keys: [B] },
    { type: "unwatch", keys: [A] },
    { type: "follow", scope: "count" },
  ]);
  ws.receive({ type: "count", epoch: "e1", seq: 12, online: 1234, applied: 4 });
  assert.equal(client.view.count, 1234);
  assert.equal(client.view.scope, "count");
  client.close();
});

test("v2: bad requests throw a TypeError and write nothing", async () => {
  assert.throws(
    () => new LobbyClient(URL, { identity: { publicKey: ME }, WebSocket: class {}, version: 3 }),
    /version must be 1 or 2/,
  );
  assert.throws(
    () => new LobbyClient(URL, { identity: { publicKey: ME }, WebSocket: class {}, record: {} }),
    /need version 2/,
  );
  const { client, sockets } = await setup();
  const connected = client.connect();
  const { ws } = await handshake(sockets);
  await connected;
  assert.throws(() => client.setRecord({ status: "x".repeat(33) }), /status must be 1-32 bytes/);
  assert.throws(() => client.watch([A]), /followWatch first/);
  assert.throws(() => client.follow({ scope: "watch", keys: "abc" }), /64-hex/);
  assert.equal(ws.sent.length, 1);
  client.close();
});

test("v2: a server that selects no subprotocol is refused, and not retried", async () => {
  const { client, sockets, clock } = await setup({}, []);
  const connected = client.connect();
  sockets[0].receive(challenge);
  await assert.rejects(
    connected,
    (error) =>
      error instanceof NotVersion2 &&
      error instanceof ProtocolError &&
      /does not speak protocol version 2/.test(error.message),
  );
  assert.equal(client.status, "closed");
  assert.deepEqual(clock.pending(), []);
  assert.equal(sockets[0].sentOfType("auth").length, 0);
});

test("v2: a gap asks once for a snapshot; updates wait for it", async () => {
  const { client, sockets } = await setup();
  const errors = recordEvents(client, ["error"]);
  const connected = client.connect();
  const { ws } = await handshake(sockets);
  await connected;
  ws.receiveBinary(updateV2(13, 12, { left: [A] }));
  ws.receiveBinary(updateV2(14, 13, { joined: [{ key: B }] }));
  assert.deepEqual(ws.sentOfType("get_lobby"), [{ type: "get_lobby" }]);
  assert.ok(errors[0][1].error instanceof SequenceGap);
  assert.deepEqual([...client.view.online].sort(), [A, ME].sort());
  ws.receiveBinary(snapshotV2("e1", 14, [{ key: ME }, { key: B }]));
  assert.deepEqual([...client.view.online].sort(), [B, ME].sort());
  assert.equal(client.view.stale, false);
  client.close();
});

test("v2: a reconnection resumes from the view held, with the record and scope asked since", async () => {
  const { client, sockets, clock } = await setup({ follow: { scope: "watch", keys: [A, B] } });
  const connected = client.connect();
  const first = await handshake(sockets, snapshotV2("e1", 10, [{ key: A }], "watch"));
  await connected;
  first.ws.receiveBinary(updateV2(15, 10, { joined: [{ key: B }] }));
  first.ws.drop(1006);
  assert.equal(client.status, "reconnecting");
  client.setRecord({ data: { name: "Me" } }); // no connection: the next auth carries it
  clock.fire();
  const { auth } = await handshake(sockets, updateV2(20, 15, { left: [A] }));
  assert.deepEqual(auth.resume, { epoch: "e1", seq: 15 });
  assert.deepEqual(auth.record, { data: { name: "Me" } });
  assert.deepEqual(auth.follow, { scope: "watch", keys: [A, B] });
  await until(() => client.status === "online", "online again");
  assert.deepEqual([...client.view.records.keys()], [B]);
  assert.equal(client.view.seq, 20);
  client.close();
});

test("v2: a watch in flight when the connection drops is asked again after a resume", async () => {
  const { client, sockets, clock } = await setup({ follow: { scope: "watch", keys: [A] } });
  const connected = client.connect();
  const first = await handshake(sockets, snapshotV2("e1", 10, [{ key: A }], "watch"));
  await connected;
  client.watch([B]); // B is online: the answering snapshot would list it
  assert.deepEqual(first.ws.sentOfType("watch"), [{ type: "watch", keys: [B] }]);
  first.ws.drop(1006); // before the snapshot came
  clock.fire();
  const { ws, auth } = await handshake(sockets, updateV2(12, 10, {}));
  assert.deepEqual(auth.follow, { scope: "watch", keys: [A] }, "the list of the view held");
  assert.deepEqual(auth.resume, { epoch: "e1", seq: 10 });
  assert.deepEqual(ws.sentOfType("watch"), [{ type: "watch", keys: [B] }], "asked again");
  assert.deepEqual(client.following, { scope: "watch", keys: [A, B] });
  ws.receiveBinary(snapshotV2("e1", 12, [{ key: A }, { key: B }], "watch", 1));
  assert.deepEqual([...client.view.online].sort(), [A, B].sort());
  // A snapshot nobody asked for (a resync) counts no request.
  ws.receiveBinary(snapshotV2("e2", 3, [{ key: B }], "watch", 1));
  client.watch([ME]);
  ws.drop(1006);
  clock.fire();
  const third = await handshake(sockets, updateV2(4, 3, {}));
  assert.deepEqual(third.auth.follow, { scope: "watch", keys: [A, B] });
  assert.deepEqual(third.auth.resume, { epoch: "e2", seq: 3 });
  assert.deepEqual(third.ws.sentOfType("watch"), [{ type: "watch", keys: [ME] }]);
  client.close();
});

test("v2: a refused request is taken back, even after one whose snapshot is late", async () => {
  const C = key("c");
  const { client, sockets } = await setup({ follow: { scope: "watch", keys: [A] } });
  const connected = client.connect();
  const { ws } = await handshake(sockets, snapshotV2("e1", 10, [{ key: A }], "watch"));
  await connected;
  const full = (applied) => ({ type: "error", code: "watchlist_full", message: "full", applied });
  client.watch([B]);
  client.watch([C]);
  ws.receive(full(0)); // the watch of B
  assert.deepEqual(client.following, { scope: "watch", keys: [A, C] });
  ws.receiveBinary(snapshotV2("e1", 11, [{ key: A }, { key: C }], "watch", 1));
  client.watch([B]); // applied: its snapshot is late (a slow consumer's)
  client.unwatch([A]); // refused after 2 applied
  ws.receive(full(2));
  assert.deepEqual(client.following, { scope: "watch", keys: [A, C, B] });
  ws.receiveBinary(snapshotV2("e1", 12, [{ key: A }, { key: B }, { key: C }], "watch", 2));
  client.follow({ scope: "lobby" });
  ws.receive({ type: "error", code: "rate_limited", message: "slow down", applied: 2 });
  assert.deepEqual(client.following, { scope: "watch", keys: [A, C, B] });
  ws.receive({ type: "error", code: "rate_limited", message: "slow down" }); // no request's
  assert.deepEqual(client.following, { scope: "watch", keys: [A, C, B] });
  client.close();
});
