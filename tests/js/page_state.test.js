// The lobby page's pure state (workers/static/page_state.js) and its version probe
// (workers/static/version_probe.js, with a scripted WebSocket and a manual clock).

import assert from "node:assert/strict";
import { test } from "node:test";

import {
  Conversations,
  MAX_THREAD_ITEMS,
  entryText,
  parseProfile,
  profileProblem,
  profileRecord,
  recipientText,
  recordErrorText,
  resultText,
  staleness,
} from "../../workers/static/page_state.js";
import { lacksVersion2 } from "../../workers/static/version_probe.js";
import { key, manualClock } from "./fakes.js";

const A = key("a");
const B = key("b");
const C = key("c");

test("an entry: the name as given, the key prefix always, the status, ours marked", () => {
  const name = "<b>Ada</b> \u202e";
  assert.deepEqual(entryText(A, { status: "busy", data: { name } }, A), {
    name,
    key: "aaaaaaaa…",
    status: "busy",
    mine: true,
  });
  // Version 1 has no records; data without a string name has no name.
  assert.deepEqual(entryText(B, undefined, A), {
    name: "",
    key: "bbbbbbbb…",
    status: "",
    mine: false,
  });
  assert.equal(entryText(B, { status: "online", data: { name: 7 } }, A).name, "");
});

test("the recipient line names the key prefix too, and says when it is not online", () => {
  assert.equal(
    recipientText(A, { status: "online", data: { name: "Ada" } }, true),
    "Ada (aaaaaaaa…)",
  );
  assert.equal(recipientText(B, undefined, false), "bbbbbbbb… (not online)");
});

test("a profile's record, and the protocol's limits as sentences for the form", () => {
  assert.deepEqual(profileRecord({ name: "Ada", choice: "away", custom: "" }), {
    status: "away",
    data: { name: "Ada" },
  });
  assert.deepEqual(profileRecord({ name: "", choice: "custom", custom: "lunch" }), {
    status: "lunch",
    data: {},
  });
  assert.equal(profileProblem({ name: "Ada", choice: "busy", custom: "" }), null);
  assert.equal(profileProblem({ name: "", choice: "custom", custom: "" }), "Type a custom status.");
  assert.match(profileProblem({ name: "", choice: "custom", custom: "é".repeat(17) }), /32 bytes/);
  assert.match(profileProblem({ name: "", choice: "custom", custom: "a\u0007" }), /control/);
  // {"name":"…"} is 11 bytes around the name: 244 fit in 255, 245 do not.
  assert.equal(profileProblem({ name: "x".repeat(244), choice: "online", custom: "" }), null);
  assert.match(
    profileProblem({ name: "x".repeat(245), choice: "online", custom: "" }),
    /name is too long.*255/,
  );
});

test("a stored profile is read back only while it is valid", () => {
  const profile = { name: "Ada", choice: "custom", custom: "lunch" };
  assert.deepEqual(parseProfile(JSON.stringify(profile)), profile);
  for (const bad of [
    null,
    "",
    "{",
    "[]",
    '{"choice":"asleep"}',
    '{"name":3}',
    JSON.stringify({ name: "x".repeat(300) }),
  ]) {
    assert.equal(parseProfile(bad), null, bad);
  }
});

test("record refusals the form shows; other server errors are not its", () => {
  assert.match(recordErrorText("bad_record"), /refused/);
  assert.match(recordErrorText("rate_limited"), /wait/);
  assert.equal(recordErrorText("malformed"), null);
});

test("conversations: one per key, results in place, unread counts until selected", () => {
  const talks = new Conversations();
  // The first message while nobody is selected selects its sender: nothing unread.
  talks.received(B, "m1", "hi");
  assert.equal(talks.selected, B);
  assert.equal(talks.unread(B), 0);
  const sent = talks.sent(B, "s1", "hello back");
  assert.equal(resultText(sent), "sending…");
  talks.result(B, "s1", "rejected", "rate_limited");
  assert.deepEqual(
    talks.thread(B).map(({ way, id, status, reason }) => [way, id, status, reason]),
    [
      ["in", "m1", undefined, undefined],
      ["out", "s1", "rejected", "rate_limited"],
    ],
  );
  assert.equal(resultText(sent), "rejected (rate_limited)");
  // Another's messages count as unread until theirs is selected.
  talks.received(C, "m2", "psst");
  talks.received(C, "m3", "hey");
  assert.equal(talks.unread(C), 2);
  assert.equal(talks.select(C), true);
  assert.equal(talks.unread(C), 0);
  assert.equal(talks.select(C), false);
  assert.deepEqual(talks.thread(A), []);
  assert.equal(talks.result(A, "nope", "delivered"), null);
});

test("a conversation keeps its last entries", () => {
  const talks = new Conversations();
  talks.select(B);
  for (let i = 0; i <= MAX_THREAD_ITEMS; i++) talks.received(B, `m${i}`, "x");
  assert.equal(talks.thread(B).length, MAX_THREAD_ITEMS);
  assert.equal(talks.thread(B)[0].id, "m1");
});

test("the view is stale unless online and not catching up", () => {
  assert.equal(staleness("online", false), null);
  assert.equal(staleness("online", true).why, "resyncing");
  assert.equal(staleness("reconnecting", false).why, "reconnecting");
  assert.match(staleness("replaced", false).note, /Another tab/);
  assert.equal(staleness("closed", false).why, "closed");
  assert.equal(staleness("connecting", false).why, "connecting");
});

/** A WebSocket class whose sockets the test opens or fails, one script per socket. */
function scriptedSockets(outcomes) {
  const sockets = [];
  class Scripted {
    constructor(url, protocols = []) {
      const outcome = outcomes.shift();
      if (outcome === "throw") throw new SyntaxError("bad URL");
      Object.assign(this, { url, protocols, closedWith: [] });
      sockets.push(this);
      if (outcome !== "hang")
        queueMicrotask(() => (outcome === "open" ? this.onopen() : this.onclose({ code: 1006 })));
    }
    close(code) {
      this.closedWith.push(code);
    }
  }
  return { Scripted, sockets };
}

test("probe: up (a plain socket opens) and refusing presence.v2: no version 2", async () => {
  const { Scripted, sockets } = scriptedSockets(["open", "fail"]);
  assert.equal(await lacksVersion2("ws://h/ws", { WebSocket: Scripted }), true);
  assert.deepEqual(
    sockets.map((s) => s.protocols),
    [[], ["presence.v2"]],
  );
  assert.deepEqual(sockets[0].closedWith, [1000]);
});

test("probe: anything else proves nothing", async () => {
  for (const script of [["open", "open"], ["fail"], ["throw"]]) {
    const { Scripted, sockets } = scriptedSockets([...script]);
    assert.equal(await lacksVersion2("ws://h/ws", { WebSocket: Scripted }), false, script.join());
    for (const socket of sockets) assert.deepEqual(socket.closedWith.slice(-1), [1000]);
  }
  // A socket that neither opens nor fails in time: closed, and nothing proved.
  const clock = manualClock();
  const { Scripted, sockets } = scriptedSockets(["open", "hang"]);
  const answer = lacksVersion2("ws://h/ws", { WebSocket: Scripted, ...clock, timeoutMs: 5 });
  await new Promise((resolve) => setImmediate(resolve));
  assert.deepEqual(clock.pending(), [5]);
  clock.fire();
  assert.equal(await answer, false);
  assert.deepEqual(sockets[1].closedWith, [1000]);
});
