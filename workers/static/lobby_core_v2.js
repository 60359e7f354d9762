/**
 * lobby_core_v2.js: the pure part of lobby.js's protocol version 2 mode: no sockets,
 * no timers, no storage. The Python twin is shared/session_v2.py; both are held to
 * tests/vectors/view_v2.json.
 *
 * - `RecordView`: the lobby as a v2 client sees it: `records` (a Map of key ->
 *   `{status, data}`) of the users online in the scope followed, with `epoch`, `seq`,
 *   `scope`, `count` and `stale`. Updates apply when their `prev` is the view's seq; a
 *   gap or a contradiction makes the view stale (it refuses updates until a snapshot
 *   or count); a repeat (seq at or below the view's) is refused and changes nothing.
 * - `applyFrameV2(view, frame)`: applies a decoded `snapshot`, `update` or `count`
 *   (protocol_v2.js `decodeServerFrameV2`) and returns what changed, in the shape of
 *   lobby_core.js `applyLobbyFrame` plus `updated`.
 * - `WantedV2`: what a v2 client asks for: its record and scope (checked by the
 *   codec's rules, a `TypeError` before anything is written), the frames that change
 *   them, and the `auth` of each connection, which carries them and a `resume` from
 *   the view held.
 *
 * @module lobby_core_v2
 */

import {
  DuplicateUpdate,
  HEX64,
  InconsistentSnapshot,
  InconsistentUpdate,
  ProtocolError,
  SequenceGap,
} from "./lobby_core.js";
import { signV2 } from "./identity.js";
import {
  MAX_WATCH_KEYS,
  PROTOCOL_VERSION_2,
  SUBPROTOCOL,
  checkRecord,
  encodeAuthV2,
  serverIdentity,
} from "./protocol_v2.js";

export { SUBPROTOCOL };

/**
 * The server selected no `presence.v2`: it has no version 2. A client that speaks
 * version 1 may continue in it (a new `LobbyClient` without `version: 2`).
 */
export class NotVersion2 extends ProtocolError {}

/** The lobby of a version 2 client (see the module comment). Changed only by apply*. */
export class RecordView {
  /** @type {string | null} */ epoch = null;
  /** @type {number | null} */ seq = null;
  /** @type {"lobby" | "watch" | "count" | null} */ scope = null;
  /** True after a gap or a contradiction: a snapshot is needed. */
  stale = false;
  #records = new Map();
  #count = 0;

  /** @returns {ReadonlyMap<string, {status: string, data: object}>} do not change it. */
  get records() {
    return this.#records;
  }

  /** @returns {Set<string>} the keys online in the scope (a copy). */
  get online() {
    return new Set(this.#records.keys());
  }

  /** @returns {number} the users online: the count's number in the count scope. */
  get count() {
    return this.scope === "count" ? this.#count : this.#records.size;
  }

  applySnapshot({ epoch, seq, scope, entries }) {
    const records = new Map(entries.map(({ key, status, data }) => [key, { status, data }]));
    if (records.size !== entries.length) {
      this.stale = true; // the server meant to replace the view
      throw new InconsistentSnapshot(`snapshot ${seq} lists a key more than once`);
    }
    Object.assign(this, { epoch, seq, scope, stale: false });
    this.#records = records;
  }

  applyCount({ epoch, seq, online }) {
    Object.assign(this, { epoch, seq, scope: "count", stale: false });
    this.#records = new Map();
    this.#count = online;
  }

  applyUpdate(update) {
    try {
      this.#check(update);
    } catch (error) {
      if (!(error instanceof DuplicateUpdate)) this.stale = true;
      throw error;
    }
    for (const key of update.left) this.#records.delete(key);
    for (const { key, status, data } of [...update.joined, ...update.updated]) {
      this.#records.set(key, { status, data });
    }
    this.seq = update.seq;
  }

  #check({ seq, prev, joined, updated, left }) {
    if (this.seq === null || this.scope === "count" || this.stale) {
      throw new SequenceGap(`update ${seq}: no view to apply it to`);
    }
    if (prev !== this.seq) {
      if (seq <= this.seq)
        throw new DuplicateUpdate(`update ${seq} repeats: the view is at ${this.seq}`);
      throw new SequenceGap(`update ${seq} follows ${prev}, but the view is at ${this.seq}`);
    }
    const leaving = new Set(left);
    const joining = new Set(joined.map((entry) => entry.key));
    const changing = new Set(updated.map((entry) => entry.key));
    if (
      leaving.size !== left.length ||
      joining.size !== joined.length ||
      changing.size !== updated.length
    ) {
      throw new InconsistentUpdate(`update ${seq} lists a key twice in one list`);
    }
    for (const key of changing) {
      if (joining.has(key) || leaving.has(key)) {
        throw new InconsistentUpdate(`update ${seq} lists an updated key twice`);
      }
      if (!this.#records.has(key))
        throw new InconsistentUpdate(`update ${seq}: ${key} updated but not online`);
    }
    for (const key of leaving) {
      if (!this.#records.has(key))
        throw new InconsistentUpdate(`update ${seq}: ${key} left but not online`);
    }
    for (const key of joining) {
      if (this.#records.has(key) && !leaving.has(key)) {
        throw new InconsistentUpdate(`update ${seq}: ${key} joined but already online`);
      }
    }
  }
}

/**
 * Applies a decoded v2 lobby frame to `view`; returns `{kind: "snapshot", seq, online}`
 * (a count is the count scope's snapshot, with no keys) or `{kind: "update", seq,
 * joined, left, updated}` (keys).
 * @throws {ProtocolError} for another frame; a view error when the view refuses it
 */
export function applyFrameV2(view, frame) {
  if (frame?.type === "snapshot") {
    view.applySnapshot(frame);
    return { kind: "snapshot", seq: frame.seq, online: frame.entries.map((entry) => entry.key) };
  }
  if (frame?.type === "count") {
    view.applyCount(frame);
    return { kind: "snapshot", seq: frame.seq, online: [] };
  }
  if (frame?.type === "update") {
    view.applyUpdate(frame);
    const keys = (entries) => entries.map((entry) => entry.key);
    return {
      kind: "update",
      seq: frame.seq,
      joined: keys(frame.joined),
      left: frame.left,
      updated: keys(frame.updated),
    };
  }
  throw new ProtocolError(`not a lobby frame: ${frame?.type}`);
}

/** `keys` lowercase and distinct, or a TypeError naming `what`. */
function checkKeys(keys, what) {
  if (!Array.isArray(keys) || keys.some((key) => typeof key !== "string" || !HEX64.test(key))) {
    throw new TypeError(`${what}: keys must be an array of 64-hex public keys`);
  }
  const distinct = [...new Set(keys.map((key) => key.toLowerCase()))];
  if (distinct.length > MAX_WATCH_KEYS) {
    throw new TypeError(`${what}: a watchlist holds at most ${MAX_WATCH_KEYS} keys`);
  }
  return distinct;
}

function checkFollow(follow) {
  const fields = Object.keys(follow ?? {})
    .sort()
    .join();
  if (fields === "scope" && (follow.scope === "lobby" || follow.scope === "count")) {
    return { scope: follow.scope };
  }
  if (fields === "keys,scope" && follow.scope === "watch") {
    return { scope: "watch", keys: checkKeys(follow.keys, "follow") };
  }
  throw new TypeError(
    'follow must be {scope: "lobby"}, {scope: "count"} or {scope: "watch", keys}',
  );
}

/** What a version 2 client asks for, and the frames that ask (see the module comment). */
export class WantedV2 {
  /** @type {{status?: string, data?: object} | undefined} */ record;
  /** @type {{scope: string, keys?: string[]} | undefined} */ follow;

  /**
   * @param {string} url the URL dialed: its server identity is what the auth signs
   * @throws {BadServerUrl | TypeError} for a URL, record or follow that is not one
   */
  constructor(url, { record, follow } = {}) {
    this.server = serverIdentity(url);
    const problem = record === undefined ? null : checkRecord(record);
    if (problem) throw new TypeError(`record: ${problem}`);
    if (record !== undefined) this.record = { ...record };
    if (follow !== undefined) this.follow = checkFollow(follow);
  }

  /**
   * The WantedV2 of a client made with `{ version, record, follow }`; null for version 1.
   * @throws {TypeError} for another version, or record/follow without version 2
   */
  static forVersion(version, url, { record, follow }) {
    if (version !== 1 && version !== 2)
      throw new TypeError(`version must be 1 or 2, not ${version}`);
    if (version === 2) return new WantedV2(url, { record, follow });
    if ((record ?? follow) !== undefined) throw new TypeError("record and follow need version 2");
    return null;
  }

  /** Why a challenge on a socket with subprotocol `selected` is refused (an error), or null. */
  refusal(selected, version) {
    if (selected !== SUBPROTOCOL)
      return new NotVersion2("the server does not speak protocol version 2");
    if (version === PROTOCOL_VERSION_2) return null;
    return new ProtocolError(`the server speaks protocol ${version}, not 2`);
  }

  /** Checks `{status?, data?}` (at least one) and returns the `set_record` frame. */
  setRecord({ status, data } = {}) {
    const record = Object.fromEntries(
      Object.entries({ status, data }).filter(([, v]) => v !== undefined),
    );
    const problem = checkRecord(record);
    if (problem) throw new TypeError(`setRecord: ${problem}`);
    if (Object.keys(record).length === 0) throw new TypeError("setRecord: needs status or data");
    this.record = { ...this.record, ...record };
    return { type: "set_record", ...record };
  }

  /** Checks a choice of scope and returns the `follow` frame. */
  setFollow(follow) {
    this.follow = checkFollow(follow);
    return { type: "follow", ...this.follow };
  }

  /** Adds (`watch`) or removes (`unwatch`) keys of the watchlist; returns the frame. */
  changeWatchlist(type, keys) {
    if (this.follow?.scope !== "watch")
      throw new TypeError(`${type}: needs a watchlist: followWatch first`);
    const changed = checkKeys(keys, type);
    const kept =
      type === "watch"
        ? [...this.follow.keys, ...changed]
        : this.follow.keys.filter((key) => !changed.includes(key));
    this.follow = { scope: "watch", keys: checkKeys(kept, type) };
    return { type, keys: changed };
  }

  /** Where a new connection may resume from: the view's epoch and seq, if live (a count has none). */
  resumeFrom(view) {
    const live =
      view instanceof RecordView && view.seq !== null && !view.stale && view.scope !== "count";
    const same = live && view.scope === (this.follow?.scope ?? "lobby"); // else: a change is on its way
    return same ? { epoch: view.epoch, seq: view.seq } : undefined;
  }

  /** The `auth` text answering `nonce`, for `identity`, resuming from `view` if it can. */
  async auth(identity, nonce, view) {
    const signature = await signV2(identity.privateKey, this.server, nonce);
    const { record, follow } = this;
    const resume = this.resumeFrom(view);
    return encodeAuthV2({
      publicKey: identity.publicKey,
      signature,
      server: this.server,
      record,
      follow,
      resume,
    });
  }
}
