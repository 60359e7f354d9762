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
 * - Scope requests (`follow`, `watch`, `unwatch`; docs/PROTOCOL.md "Resume"): WantedV2
 *   keeps the choice the view is of, and the requests sent since, in order. Each
 *   snapshot's or count's `applied` says how many the view reflects (`viewed`); an
 *   `error` with `applied` refuses `sent[applied - reflected]` (`refused`: taken back).
 *   A resuming `auth` states the view's choice, and the requests the view did not
 *   reflect are written again once `auth_ok` came (`afterAuthOk`), as are those asked
 *   for while no `auth_ok` had come. The Python twin is shared/v2/following.py.
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

/** The choice `choice` becomes when the server applies the scope request `frame`. */
export function applyRequest(choice, frame) {
  if (frame.type === "follow") {
    return frame.scope === "watch" ? { scope: "watch", keys: frame.keys } : { scope: frame.scope };
  }
  if (choice.scope !== "watch") return choice; // refused: not_watching
  const keys =
    frame.type === "watch"
      ? [...new Set([...choice.keys, ...frame.keys])]
      : choice.keys.filter((key) => !frame.keys.includes(key));
  return { scope: "watch", keys };
}

/** What a version 2 client asks for, and the frames that ask (see the module comment). */
export class WantedV2 {
  /** @type {{status?: string, data?: object} | undefined} */ record;
  /** The choice the view is of (undefined: none stated, the server's default, the lobby). */
  #view;
  /** The `applied` of the view's last snapshot or count on this connection. */
  #reflected = 0;
  /** Scope requests written on this connection, neither reflected nor refused. */
  #sent = [];
  /** Scope requests to write once `auth_ok` comes. */
  #unsent = [];

  /** @returns {{scope: string, keys?: string[]} | undefined} the choice asked for. */
  get follow() {
    const requests = [...this.#sent, ...this.#unsent];
    if (this.#view === undefined && requests.length === 0) return undefined;
    return requests.reduce(applyRequest, this.#view ?? { scope: "lobby" });
  }

  /** @returns {{scope: string, keys?: string[]}} the choice the view is of. */
  get viewChoice() {
    return this.#view ?? { scope: "lobby" };
  }

  /**
   * @param {string} url the URL dialed: its server identity is what the auth signs
   * @throws {BadServerUrl | TypeError} for a URL, record or follow that is not one
   */
  constructor(url, { record, follow } = {}) {
    this.server = serverIdentity(url);
    const problem = record === undefined ? null : checkRecord(record);
    if (problem) throw new TypeError(`record: ${problem}`);
    if (record !== undefined) this.record = { ...record };
    if (follow !== undefined) this.#view = checkFollow(follow);
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

  /** Checks a choice of scope and returns the `follow` frame (pass it to `request`). */
  setFollow(follow) {
    return { type: "follow", ...checkFollow(follow) };
  }

  /** Checks a change (`watch` adds, `unwatch` removes keys); returns the frame. */
  changeWatchlist(type, keys) {
    const follow = this.follow;
    if (follow?.scope !== "watch")
      throw new TypeError(`${type}: needs a watchlist: followWatch first`);
    const changed = checkKeys(keys, type);
    checkKeys(applyRequest(follow, { type, keys: changed }).keys, type);
    return { type, keys: changed };
  }

  /**
   * Records the scope request `frame`; returns it when it is to be written now (the
   * connection had `auth_ok`), else null (it is written once `auth_ok` comes).
   */
  request(frame, authOk) {
    (authOk ? this.#sent : this.#unsent).push(frame);
    return authOk ? frame : null;
  }

  /** `auth_ok` came: the requests to write now, in order. */
  afterAuthOk() {
    const out = this.#unsent;
    this.#unsent = [];
    this.#sent.push(...out);
    return out;
  }

  /**
   * A snapshot or count with `applied` replaced the view.
   * @throws {ProtocolError} when it counts requests never written
   */
  viewed(applied) {
    const done = applied - this.#reflected;
    if (!Number.isInteger(done) || done < 0 || done > this.#sent.length) {
      const waiting = `${this.#reflected} were, ${this.#sent.length} more wait`;
      throw new ProtocolError(`a snapshot reflects ${applied} requests: ${waiting}`);
    }
    this.#view = this.#sent.splice(0, done).reduce(applyRequest, this.viewChoice);
    this.#reflected = applied;
  }

  /**
   * An error with `applied` refused a request: it is taken back; returns it.
   * @throws {ProtocolError} when none written can be the one
   */
  refused(applied) {
    const index = applied - this.#reflected;
    if (!Number.isInteger(index) || index < 0 || index >= this.#sent.length) {
      const waiting = `${this.#reflected} were reflected, ${this.#sent.length} more wait`;
      throw new ProtocolError(`an error refuses a request after ${applied} applied: ${waiting}`);
    }
    return this.#sent.splice(index, 1)[0];
  }

  /** Where a new connection may resume from: the view's epoch and seq, if live (a count has none). */
  resumeFrom(view) {
    const live =
      view instanceof RecordView && view.seq !== null && !view.stale && view.scope !== "count";
    const same = live && view.scope === this.viewChoice.scope;
    return same ? { epoch: view.epoch, seq: view.seq } : undefined;
  }

  /**
   * The `auth` text answering `nonce`, for `identity`, resuming from `view` if it can:
   * then its `follow` is the view's choice, and the requests the view did not reflect
   * are written again after `auth_ok`; else it asks for the choice asked for.
   */
  async auth(identity, nonce, view) {
    const resume = this.resumeFrom(view);
    if (resume) {
      this.#unsent = [...this.#sent, ...this.#unsent];
    } else {
      this.#view = this.follow;
      this.#unsent = [];
    }
    this.#sent = [];
    this.#reflected = 0;
    const follow = this.#view;
    const signature = await signV2(identity.privateKey, this.server, nonce);
    const { record } = this;
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
