// LobbyView: the protocol's rules for applying snapshots and updates.

import assert from "node:assert/strict";
import { test } from "node:test";

import {
  DuplicateUpdate,
  InconsistentUpdate,
  LobbyError,
  LobbyView,
  SequenceGap,
} from "../../workers/static/lobby.js";
import { key } from "./fakes.js";

const A = key("a");
const B = key("b");
const C = key("c");

function viewAt(seq, keys) {
  const view = new LobbyView();
  view.applySnapshot(seq, keys);
  return view;
}

/** Asserts that the update throws `ErrorClass` and leaves the view as it was. */
function assertRefused(view, ErrorClass, seq, joined, left) {
  const before = { seq: view.seq, online: [...view.online].sort() };
  assert.throws(() => view.applyUpdate(seq, joined, left), ErrorClass);
  assert.deepEqual({ seq: view.seq, online: [...view.online].sort() }, before);
}

test("a new view has no seq and nobody online", () => {
  const view = new LobbyView();
  assert.equal(view.seq, null);
  assert.equal(view.online.size, 0);
});

test("a snapshot replaces the whole view, lowercases keys, and may lower the seq", () => {
  const view = viewAt(41, [A, B]);
  view.applySnapshot(7, [C.toUpperCase()]);
  assert.equal(view.seq, 7);
  assert.deepEqual([...view.online], [C]);
});

test("an update removes left keys, then adds joined keys", () => {
  const view = viewAt(1, [A, B]);
  view.applyUpdate(2, [C], [B]);
  assert.equal(view.seq, 2);
  assert.deepEqual([...view.online].sort(), [A, C]);
});

test("a key in both lists (a reconnection) stays online", () => {
  const view = viewAt(1, [A, B]);
  view.applyUpdate(2, [B], [B, A]);
  assert.deepEqual([...view.online], [B]);
});

test("an update that skips ahead is a SequenceGap", () => {
  assertRefused(viewAt(5, [A]), SequenceGap, 7, [B], []);
});

test("an update before any snapshot is a SequenceGap", () => {
  assertRefused(new LobbyView(), SequenceGap, 1, [A], []);
});

test("an update at or below the view's seq is a DuplicateUpdate", () => {
  const view = viewAt(5, [A]);
  assertRefused(view, DuplicateUpdate, 5, [B], []);
  assertRefused(view, DuplicateUpdate, 3, [B], []);
});

test("inconsistent updates are refused", async (t) => {
  const cases = {
    "a left key that is not online": [[], [B]],
    "a joined key already online and not leaving": [[A], []],
    "both lists empty": [[], []],
    "a key twice in joined": [[B, B], []],
    "a key twice in left": [[], [A, A]],
    "a key twice in left, in two cases": [[], [A, A.toUpperCase()]],
  };
  for (const [name, [joined, left]] of Object.entries(cases)) {
    await t.test(name, () => assertRefused(viewAt(1, [A]), InconsistentUpdate, 2, joined, left));
  }
});

test("a refused update changes nothing, even when its first keys were fine", () => {
  // A leaves correctly, but C was never online: A must still be there afterwards.
  assertRefused(viewAt(1, [A, B]), InconsistentUpdate, 2, [], [A, C]);
});

test("every refusal is a LobbyError and an Error", () => {
  for (const ErrorClass of [SequenceGap, DuplicateUpdate, InconsistentUpdate]) {
    const error = new ErrorClass("x");
    assert.ok(error instanceof LobbyError && error instanceof Error);
    assert.equal(error.name, ErrorClass.name);
  }
});

test("online is a Set that callers cannot change", () => {
  const view = viewAt(1, [A]);
  assert.ok(view.online instanceof Set);
  assert.throws(() => view.online.add(B), TypeError);
  assert.throws(() => view.online.delete(A), TypeError);
  assert.throws(() => view.online.clear(), TypeError);
  assert.deepEqual([...view.online], [A]);
});
