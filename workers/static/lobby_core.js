/**
 * lobby_core.js: the pure part of the lobby client (lobby.js), shared by everything
 * that speaks the protocol in JavaScript: no sockets, no timers, no storage.
 *
 * - The errors every part throws or reports (all `LobbyError`s).
 * - `LobbyView`, the lobby as a set of keys, and `applyLobbyFrame`, which checks a
 *   `lobby_snapshot` or `lobby_update` frame and applies it to a view: the rules of
 *   docs/PROTOCOL.md ("The lobby"), the same as the Python core's (shared/session.py),
 *   both held to the test vectors of tests/vectors/view.json.
 * - `authPayload`, the bytes a challenge's answer signs (tests/vectors/auth.json).
 * - The reconnect policy: `reconnects(code)` says whether a close is worth another
 *   connection, `backoffDelay` how long to wait first (tests/vectors/reconnect.json).
 *
 * lobby.js re-exports all of it; apps import lobby.js.
 *
 * @module lobby_core
 */

export const PROTOCOL_VERSION = 1;
const AUTH_PREFIX = new TextEncoder().encode("lobby-auth-v1:");
export const HEX64 = /^[0-9a-f]{64}$/i;
/** Frames the contract lets any server hold between `auth` and `auth_ok`. */
export const PIPELINE_LIMIT = 16;
export const MAX_ID_LENGTH = 64;
/** Close codes after which the contract tells clients to come back. */
export const SERVER_SIDE_CLOSES = new Set([1001, 1006, 1011, 1013]);
/**
 * Close codes after which a client must not reconnect on its own: 4001 (its
 * credentials were refused and would be again), 4002 (a newer session of the same
 * key exists, which reconnecting would knock out) and 4006 (the operator's backend
 * closed this session on purpose).
 */
export const FINAL_CLOSES = new Set([4001, 4002, 4006]);

// ---------------------------------------------------------------------------------
// Errors

/** The base class of every error this module throws or reports. */
export class LobbyError extends Error {
  constructor(message, options) {
    super(message, options);
    this.name = new.target.name;
  }
}

/** An update whose `seq` skips ahead of the view's (or comes before any snapshot). */
export class SequenceGap extends LobbyError {}

/** An update whose `seq` the view has already reached. */
export class DuplicateUpdate extends LobbyError {}

/** An update that does not follow from the view's state, or names no change. */
export class InconsistentUpdate extends LobbyError {}

/** A snapshot that lists a key more than once (a key is online at most once). */
export class InconsistentSnapshot extends LobbyError {}

/** WebCrypto cannot make or use Ed25519 keys here; the message says what to do. */
export class Ed25519Unsupported extends LobbyError {}

/**
 * No connection: a `send` made while there is none, a `send` whose connection ended
 * before its result came (the message may or may not have been delivered), or a
 * `connect()` that ended without getting online. `code` is the close code, if any.
 */
export class ConnectionLost extends LobbyError {
  constructor(message, { code = null, ...options } = {}) {
    super(message, options);
    this.code = code;
  }
}

/** The server refused our authentication; `reason` is its `auth_failed` reason. */
export class AuthFailed extends LobbyError {
  constructor(reason) {
    super(`authentication failed (${reason})`);
    this.reason = reason;
  }
}

/** The server sent something the protocol does not allow. */
export class ProtocolError extends LobbyError {}

/** The server's `error` frame: it could not act on a frame of ours. */
export class ServerError extends LobbyError {
  constructor(code, message) {
    super(`server error ${code}: ${message}`);
    this.code = code;
  }
}


// ---------------------------------------------------------------------------------
// The lobby as a set of keys

/** A Set that callers cannot change; `LobbyView` changes it through Set.prototype. */
class ReadOnlySet extends Set {
  add() {
    throw new TypeError("LobbyView.online is read-only");
  }
  delete() {
    throw new TypeError("LobbyView.online is read-only");
  }
  clear() {
    throw new TypeError("LobbyView.online is read-only");
  }
}

const setAdd = Set.prototype.add;
const setDelete = Set.prototype.delete;
const setClear = Set.prototype.clear;

/**
 * Who is online, kept by the protocol's rules (docs/PROTOCOL.md, "The lobby").
 * No I/O: feed it snapshots and updates. A refused frame throws and changes nothing.
 */
export class LobbyView {
  /** @type {number | null} the seq of the last snapshot or update applied. */
  seq = null;
  #online = new ReadOnlySet();

  /** @returns {ReadonlySet<string>} the online keys, lowercase hex; do not change it. */
  get online() {
    return this.#online;
  }

  /**
   * Replaces the whole view. A snapshot's seq may be anything, even lower than before.
   * @param {number} seq
   * @param {Iterable<string>} keys
   * @throws {InconsistentSnapshot} when a key is listed twice; changes nothing then
   */
  applySnapshot(seq, keys) {
    const online = new Set();
    for (const key of keys) {
      const lower = key.toLowerCase();
      // A key is online at most once: a snapshot naming one twice is refused whole.
      if (online.has(lower)) {
        throw new InconsistentSnapshot(`snapshot ${seq} lists ${lower} more than once`);
      }
      online.add(lower);
    }
    setClear.call(this.#online);
    for (const key of online) setAdd.call(this.#online, key);
    this.seq = seq;
  }

  /**
   * Applies one update: removes `left`, then adds `joined`, so a key in both (a
   * reconnection) stays online.
   * @param {number} seq must be exactly this.seq + 1
   * @param {string[]} joined
   * @param {string[]} left
   * @throws {SequenceGap | DuplicateUpdate | InconsistentUpdate} and changes nothing
   */
  applyUpdate(seq, joined, left) {
    this.#checkSeq(seq);
    const leaving = distinctKeys(left, "left");
    const joining = distinctKeys(joined, "joined");
    if (leaving.size === 0 && joining.size === 0) {
      throw new InconsistentUpdate(`update ${seq} has neither joined nor left keys`);
    }
    for (const key of leaving) {
      if (!this.#online.has(key)) {
        throw new InconsistentUpdate(`update ${seq}: ${key} left but was not online`);
      }
    }
    for (const key of joining) {
      if (this.#online.has(key) && !leaving.has(key)) {
        throw new InconsistentUpdate(`update ${seq}: ${key} joined but was already online`);
      }
    }
    for (const key of leaving) setDelete.call(this.#online, key);
    for (const key of joining) setAdd.call(this.#online, key);
    this.seq = seq;
  }

  #checkSeq(seq) {
    if (this.seq === null) throw new SequenceGap(`update ${seq} before any snapshot`);
    if (seq <= this.seq) {
      throw new DuplicateUpdate(`update ${seq} repeats: the view is at ${this.seq}`);
    }
    if (seq !== this.seq + 1) {
      throw new SequenceGap(`update ${seq} skips ahead: expected ${this.seq + 1}`);
    }
  }
}

/** The keys of one list, lowercase; a key listed twice makes the update inconsistent. */
function distinctKeys(keys, listName) {
  const distinct = new Set();
  for (const key of keys) {
    const lower = key.toLowerCase();
    if (distinct.has(lower)) {
      throw new InconsistentUpdate(`${lower} is twice in ${listName}`);
    }
    distinct.add(lower);
  }
  return distinct;
}


// ---------------------------------------------------------------------------------
// Lobby frames

/**
 * Checks a `lobby_snapshot` or `lobby_update` frame (a parsed JSON object) and applies
 * it to `view`. Returns what changed: `{ kind: "snapshot", seq, online }` or
 * `{ kind: "update", seq, joined, left }`, keys lowercase.
 * @param {LobbyView} view
 * @param {object} frame
 * @throws {ProtocolError} for a malformed frame; a `LobbyView` error when the view
 *   refuses it. Either way the view is unchanged.
 */
export function applyLobbyFrame(view, frame) {
  if (frame?.type === "lobby_snapshot") {
    const keys = lobbyKeys(frame.users, "users");
    checkSeq(frame.seq);
    view.applySnapshot(frame.seq, keys);
    return { kind: "snapshot", seq: frame.seq, online: keys };
  }
  if (frame?.type === "lobby_update") {
    checkSeq(frame.seq);
    const joined = lobbyKeys(frame.joined, "joined");
    const left = lobbyKeys(frame.left, "left");
    view.applyUpdate(frame.seq, joined, left);
    return { kind: "update", seq: frame.seq, joined, left };
  }
  throw new ProtocolError(`not a lobby frame: ${frame?.type}`);
}

function lobbyKeys(users, field) {
  if (!Array.isArray(users)) throw new ProtocolError(`the lobby frame's ${field} is not an array`);
  return users.map((user) => {
    if (typeof user?.publicKey !== "string" || !HEX64.test(user.publicKey)) {
      throw new ProtocolError(`the lobby frame's ${field} holds something that is not a key`);
    }
    return user.publicKey.toLowerCase();
  });
}

function checkSeq(seq) {
  if (!Number.isSafeInteger(seq)) throw new ProtocolError(`a lobby frame's seq is ${seq}`);
}

// ---------------------------------------------------------------------------------
// Authentication


/**
 * The bytes that answer a challenge: "lobby-auth-v1:" and the 32 raw nonce bytes.
 * @param {string} nonceHex the challenge's nonce, 64 hex characters
 * @returns {Uint8Array} 46 bytes
 */
export function authPayload(nonceHex) {
  const nonce = fromHex(nonceHex);
  const payload = new Uint8Array(AUTH_PREFIX.length + nonce.length);
  payload.set(AUTH_PREFIX, 0);
  payload.set(nonce, AUTH_PREFIX.length);
  return payload;
}


// ---------------------------------------------------------------------------------
// Reconnecting

/**
 * Whether a connection that closed with `code` is worth another one: every close but
 * `FINAL_CLOSES`. 1001, 1006, 1011 and 1013 are the server's or the network's doing (a
 * browser reports an upgrade refused with HTTP 503 as 1006); 1007, 1008, 1009, 4003
 * and 4005 say this connection broke a rule, which a fresh one does not inherit.
 * @param {number} code
 * @returns {boolean}
 */
export function reconnects(code) {
  return !FINAL_CLOSES.has(code);
}

/**
 * Exponential backoff with full jitter: the wait before attempt `attempt` (from 0,
 * counted since the client was last online) is `jitter * min(max, initial * 2**attempt)`.
 * @param {number} attempt
 * @param {number} jitter a random draw in [0, 1)
 * @param {number} initial seconds
 * @param {number} max seconds
 * @returns {number} seconds
 */
export function backoffDelay(attempt, jitter, initial, max) {
  return jitter * Math.min(max, initial * 2 ** Math.min(attempt, 64));
}

/**
 * What to log before reconnecting after a close: `[level, text]`. 1001, 1006, 1011 and
 * 1013 are routine (info); 1007, 1008, 1009, 4003, 4005... say this connection broke a
 * rule or fell behind, which a fresh connection does not inherit (warn).
 * @param {number} code
 * @param {string} reason
 * @param {number} retryIn seconds
 * @returns {["info" | "warn", string]}
 */
export function reconnectNotice(code, reason, retryIn) {
  const why = `closed with ${code}${reason ? ` (${reason})` : ""}`;
  const when = `reconnecting in ${retryIn.toFixed(1)} s`;
  if (SERVER_SIDE_CLOSES.has(code)) return ["info", `lobby: ${why}; ${when}`];
  const advice = "not a close the protocol says to retry after, but a new connection starts clean";
  return ["warn", `lobby: ${why}: ${advice}; ${when}`];
}

// ---------------------------------------------------------------------------------
// Sends

/** A fresh 32-hex id for a send: 128 random bits never repeat in practice. */
export function randomId() {
  return toHex(globalThis.crypto.getRandomValues(new Uint8Array(16)));
}

/**
 * Checks the arguments of a send: the server could not answer others.
 * @throws {TypeError} naming the argument
 */
export function checkSend(to, body, id) {
  if (typeof to !== "string") throw new TypeError("send: `to` must be a string");
  if (typeof body !== "string" || !body.isWellFormed()) {
    throw new TypeError("send: `body` must be a well-formed string");
  }
  if (typeof id !== "string" || id.length < 1 || id.length > MAX_ID_LENGTH || !id.isWellFormed()) {
    throw new TypeError(`send: \`id\` must be 1 to ${MAX_ID_LENGTH} characters`);
  }
}

// ---------------------------------------------------------------------------------
// Hex

/** Lowercase hex of the bytes of an ArrayBuffer or typed array. */
export function toHex(buffer) {
  return Array.from(new Uint8Array(buffer), (b) => b.toString(16).padStart(2, "0")).join("");
}

/** The bytes of a hex string. */
export function fromHex(hex) {
  return Uint8Array.from(hex.match(/../g) ?? [], (pair) => parseInt(pair, 16));
}
