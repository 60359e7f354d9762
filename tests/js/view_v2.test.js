// tests/vectors/view_v2.json against lobby_core_v2.js (RecordView, applyFrameV2): the
// Python twin (shared/session_v2.py) passes the same file (tests/shared/test_session_v2.py).
// Also WantedV2: what a v2 client asks for, checked before anything is written.

import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { test } from "node:test";

import { LobbyError } from "../../workers/static/lobby_core.js";
import { RecordView, WantedV2, applyFrameV2 } from "../../workers/static/lobby_core_v2.js";
import { decodeServerFrameV2 } from "../../workers/static/protocol_v2.js";

const VIEW_V2 = JSON.parse(readFileSync(new URL("../vectors/view_v2.json", import.meta.url))).cases;

const dump = (view) => ({
  epoch: view.epoch,
  seq: view.seq,
  scope: view.scope,
  count: view.count,
  stale: view.stale,
  records: Object.fromEntries([...view.records].sort(([a], [b]) => (a < b ? -1 : 1))),
});

for (const vector of VIEW_V2) {
  test(`view v2: ${vector.name}`, () => {
    const view = new RecordView();
    const results = [];
    const stale = [];
    for (const frame of vector.frames) {
      const { stale: _, ...before } = dump(view);
      try {
        const data = frame.text ?? new Uint8Array(Buffer.from(frame.hex, "hex")).buffer;
        applyFrameV2(view, decodeServerFrameV2(data));
        results.push("ok");
      } catch (error) {
        if (!(error instanceof LobbyError)) throw error;
        results.push(error.name);
        const { stale: __, ...after } = dump(view);
        assert.deepEqual(after, before, "a refused frame changes nothing but staleness");
      }
      stale.push(view.stale);
    }
    assert.deepEqual(results, vector.results);
    assert.deepEqual(stale, vector.stale);
    assert.deepEqual(dump(view), vector.view);
  });
}

test("WantedV2 refuses bad records, scopes and keys with a TypeError naming them", () => {
  const URL = "wss://lobby.example/ws";
  assert.equal(new WantedV2(URL).server, "wss://lobby.example:443/ws");
  assert.throws(() => new WantedV2("https://x/ws"), /scheme must be ws or wss/);
  assert.throws(() => new WantedV2(URL, { record: { status: "" } }), /record: status must be/);
  assert.throws(() => new WantedV2(URL, { follow: { scope: "all" } }), /follow must be/);
  const wanted = new WantedV2(URL, { record: { status: "busy" } });
  assert.throws(() => wanted.setRecord({}), /needs status or data/);
  assert.throws(() => wanted.setRecord({ data: { x: "y".repeat(300) } }), /at most 255/);
  assert.throws(() => wanted.changeWatchlist("watch", ["a".repeat(64)]), /followWatch first/);
  assert.throws(() => wanted.setFollow({ scope: "watch", keys: ["nothex"] }), /64-hex/);
  const many = Array.from({ length: 1001 }, (_, n) => n.toString(16).padStart(64, "0"));
  assert.throws(() => wanted.setFollow({ scope: "watch", keys: many }), /at most 1000/);
  assert.deepEqual(wanted.record, { status: "busy" });
  assert.equal(wanted.follow, undefined);
  assert.deepEqual(wanted.setRecord({ data: { n: 1 } }), { type: "set_record", data: { n: 1 } });
  assert.deepEqual(wanted.record, { status: "busy", data: { n: 1 } });
  wanted.request(wanted.setFollow({ scope: "watch", keys: many.slice(0, 1000) }), true);
  assert.throws(() => wanted.changeWatchlist("watch", ["a".repeat(64)]), /at most 1000/);
  assert.equal(wanted.follow.keys.length, 1000);
  const unwatch = wanted.changeWatchlist("unwatch", [many[0].toUpperCase()]);
  assert.deepEqual(unwatch, { type: "unwatch", keys: [many[0]] });
  wanted.request(unwatch, true);
  assert.equal(wanted.follow.keys.length, 999);
});

test("WantedV2 resumes from a live view of the choice it is of, never from a count", () => {
  const wanted = new WantedV2("ws://127.0.0.1:8765/ws");
  const view = new RecordView();
  assert.equal(wanted.resumeFrom(view), undefined, "no view yet");
  applyFrameV2(view, { type: "snapshot", epoch: "e1", seq: 5, scope: "lobby", entries: [] });
  assert.deepEqual(wanted.resumeFrom(view), { epoch: "e1", seq: 5 });
  wanted.request(wanted.setFollow({ scope: "watch", keys: [] }), true);
  assert.deepEqual(wanted.resumeFrom(view), { epoch: "e1", seq: 5 }, "the view is of the lobby");
  assert.deepEqual(wanted.viewChoice, { scope: "lobby" });
  assert.deepEqual(wanted.follow, { scope: "watch", keys: [] });
  assert.throws(() =>
    applyFrameV2(view, { type: "update", seq: 9, prev: 8, joined: [], updated: [], left: [] }),
  );
  assert.equal(wanted.resumeFrom(view), undefined, "stale");
  wanted.request(wanted.setFollow({ scope: "count" }), true);
  wanted.viewed(2);
  applyFrameV2(view, { type: "count", epoch: "e1", seq: 9, online: 3, applied: 2 });
  assert.equal(wanted.resumeFrom(view), undefined, "a count has no updates to resume");
});
