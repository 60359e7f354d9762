/**
 * lobby.js: a client for the presence lobby, for browsers and Node.js 20+.
 *
 * The lobby server tells every connected user who else is online, live, and relays
 * direct messages between users. A user is an Ed25519 key pair and is known by its
 * public key (64 lowercase hex characters). docs/PROTOCOL.md is the wire contract
 * (protocol version 1, revision 1.1); this module speaks it so that an app does not
 * have to. It has no dependencies and needs no build step.
 *
 * ## In a page
 *
 *     <script type="module">
 *       import { LobbyClient, loadOrCreateIdentity } from "/lobby.js";
 *
 *       const identity = await loadOrCreateIdentity();      // kept in IndexedDB
 *       const client = new LobbyClient("wss://lobby.example/ws", { identity });
 *       client.addEventListener("sync", (e) => showAll(e.detail.online));
 *       client.addEventListener("join", (e) => add(e.detail.key));
 *       client.addEventListener("leave", (e) => remove(e.detail.key));
 *       client.addEventListener("message", (e) => show(e.detail.from, e.detail.body));
 *       client.addEventListener("status", (e) => showStatus(e.detail));
 *       await client.connect();                  // online: authenticated, lobby known
 *       const { status } = await client.send(someKey, "hello");
 *     </script>
 *
 * Browsers offer WebCrypto, and so Ed25519, only in a secure context: serve the page
 * over https, or from http://localhost or http://127.0.0.1. Elsewhere, or in a browser
 * without Ed25519, key creation and signing throw `Ed25519Unsupported`, whose message
 * tells the user what to do. The identity's private key is created non-extractable:
 * script can sign with it but can never read it, and IndexedDB keeps it across reloads.
 * Two tabs with the same identity knock each other out (close 4002, status
 * `replaced`); give each tab its own `name`, or `storage: "memory"`, to avoid that.
 *
 * ## In Node.js
 *
 * Node 20 has WebCrypto's Ed25519 but no global WebSocket: pass one, for example the
 * `ws` package's (`import WebSocket from "ws"`), as `new LobbyClient(url, { identity,
 * WebSocket })`. `loadOrCreateIdentity()` makes a fresh identity there (no IndexedDB);
 * to keep one, generate an extractable pair, store `exportKey("pkcs8", privateKey)`
 * safely, later import it (with the raw public key) and pass the pair to
 * `identityFromKeyPair`.
 *
 * ## Public API
 *
 * - `loadOrCreateIdentity({ name, storage })`, `identityFromKeyPair(keyPair)`: an
 *   identity is `{ publicKey, privateKey, keyPair, persisted }`.
 * - `LobbyClient`: one user's connection. `connect()`, `send(to, body, { id })`,
 *   `getLobby()`, `close()`; `status`, `view`, `publicKey`; events `status`, `sync`,
 *   `join`, `leave`, `update`, `message`, `error` (all `CustomEvent`s; see the class).
 *   With `{ version: 2 }` (and `record`, `follow`): protocol version 2 (binary lobby
 *   frames, records, scopes, resume; lobby_core_v2.js), `view` is a `RecordView` and
 *   `setRecord`, `follow`, `watch`, `unwatch` change what is asked for. A server
 *   without version 2 (no `presence.v2` selected) ends it with `NotVersion2` (a
 *   `ProtocolError`): `connect()` rejects with it, and it is the `error` event's. But
 *   browsers (and the ws package) fail such a handshake themselves: there it is a close
 *   1006, as for a server that is down, and the client reconnects; version_probe.js
 *   tells the two apart.
 * - `LobbyView` (a set of keys) and `applyLobbyFrame(view, frame)`: the lobby's rules,
 *   pure (tests/vectors/view.json, as the Python client's); `authPayload(nonceHex)`:
 *   the bytes a client signs; `reconnects(code)`, `backoffDelay(...)`: the reconnect
 *   policy. All live in lobby_core.js, key pairs in identity.js; this module adds the
 *   client.
 * - Errors, all `LobbyError`s: `SequenceGap`, `DuplicateUpdate`, `InconsistentUpdate`,
 *   `InconsistentSnapshot` (the view refused a frame), `Ed25519Unsupported`,
 *   `ConnectionLost` (a send had no result, or there was no connection), `AuthFailed`,
 *   `ProtocolError` (the server broke the contract), `ServerError` (its `error` frame).
 *
 * ## Theory of operation
 *
 * The client holds at most one connection. Its state (socket, how far the handshake
 * got, frames waiting to be written, sends awaiting results) lives in one object, and
 * every socket callback first checks that its connection is still the current one, so
 * a late event from an old socket never touches a newer connection.
 *
 * Frames are written through an outbox. The server's first frame from us must be the
 * `auth`, so nothing is written before it; right behind it go up to 16 more (the
 * pipelining every conforming server accepts before `auth_ok`), and the rest once
 * `auth_ok` has come. So `send` and `getLobby` never wait for the handshake.
 *
 * The lobby is a `LobbyView` fed with the server's snapshots and updates. The view
 * refuses an update that does not follow from its state (a gap, a repeat, a key that
 * leaves without being there...), and changes nothing when it does. The client then
 * asks once for a snapshot (`get_lobby`) and ignores updates until one arrives, so the
 * view is never wrong, only at worst out of date. A new connection also ignores
 * updates until its first snapshot. Between connections `view` keeps the last lobby
 * seen; `status` says whether it is live.
 *
 * When a connection ends, the close code decides what follows. 4002 (this key was
 * opened elsewhere), 4001 (authentication failed) and 4006 (kicked by the operator's
 * backend) are final: reconnecting would knock out the newer session, fail again, or
 * undo the kick. Every other ending reconnects with
 * exponential backoff and full jitter, with the same identity: the wait before
 * attempt n (from 0) is `random() * min(max, initial * 2**n)` seconds, and n starts
 * again at 0 once a connection is online. 1001, 1006, 1011 and 1013 are the server's
 * or the network's doing (a server at capacity may refuse the upgrade with HTTP 503,
 * which a browser reports as 1006: backing off is the right answer to both); other
 * codes (1007, 1008, 1009, 4003, 4005) say this connection broke a rule and are logged
 * as warnings, but the next connection starts clean, so it is tried too. `close()`
 * ends it all.
 *
 * Version 2 differs only in what WantedV2 and RecordView (lobby_core_v2.js) decide:
 * the auth (bound to the URL's server identity, with record, scope and a resume from
 * the view held) and the view's rules. A resumed connection is online on its first
 * update. A record asked for while no auth is out goes into the next auth. A resuming
 * auth states the choice its view is of; the scope requests that view did not reflect,
 * and those asked for before auth_ok, are written once auth_ok came; a refused one is
 * taken back (`following` is the choice asked for).
 *
 * @module lobby
 */


import {
  HEX64,
  LobbyError,
  LobbyView,
  PIPELINE_LIMIT,
  PROTOCOL_VERSION,
  AuthFailed,
  ConnectionLost,
  ProtocolError,
  ServerError,
  applyLobbyFrame,
  authPayload,
  backoffDelay,
  checkSend,
  randomId,
  reconnectNotice,
  reconnects,
  toHex,
} from "./lobby_core.js";
import { sign } from "./identity.js";
import { RecordView, SUBPROTOCOL, WantedV2, applyFrameV2 } from "./lobby_core_v2.js";
import { decodeServerFrameV2 } from "./protocol_v2.js";

export {
  AuthFailed,
  ConnectionLost,
  DuplicateUpdate,
  Ed25519Unsupported,
  InconsistentSnapshot,
  InconsistentUpdate,
  LobbyError,
  LobbyView,
  ProtocolError,
  SequenceGap,
  ServerError,
  applyLobbyFrame,
  authPayload,
  backoffDelay,
  reconnects,
} from "./lobby_core.js";
export { identityFromKeyPair, loadOrCreateIdentity } from "./identity.js";
export { NotVersion2, RecordView } from "./lobby_core_v2.js";

const REPLACED = "this identity was opened elsewhere (another tab or device)";

/**
 * One user's connection to the lobby, kept up across network trouble.
 *
 * Events (all `CustomEvent`s; read `event.detail`):
 * - `status`  `{ status, code, reason, retryIn, retryAt }` on every change of `status`.
 *   `code` and `reason` explain a change that a close caused (`reason` is for people);
 *   `retryIn` (seconds) and `retryAt` (a `now()` time, ms) are set when `reconnecting`.
 * - `sync`    `{ seq, online }` after every snapshot; `online` is sorted.
 * - `join`, `leave`  `{ key, seq }` for each key of each applied update: all leaves,
 *   then all joins, so a reconnection is a `leave` then a `join` of the same key.
 * - `update`  `{ seq, joined, left }` after the `join` and `leave` events of one update.
 * - `message` `{ from, id, body }` a direct message. The body is untrusted text.
 * - `error`   `{ error }` the server broke the protocol (`ProtocolError`, or a refused
 *   update) or refused a frame of ours (`ServerError`); also logged.
 */
export class LobbyClient extends EventTarget {
  #url;
  #identity;
  #WebSocket;
  #initialDelay;
  #maxDelay;
  #random;
  #now;
  #setTimeout;
  #clearTimeout;
  #logger;
  /** Version 2 only: what we ask for (record, scope); null in version 1. */
  #wanted = null;
  #view;
  #status = "closed";
  /** The current connection's state, or null while there is none. */
  #conn = null;
  #retryTimer = null;
  /** Failed attempts since the last time online: the backoff exponent. */
  #attempt = 0;
  /** The pending `connect()` promise's settle functions, until online or stopped. */
  #connecting = null;

  /**
   * @param {string} url the server's WebSocket endpoint, e.g. "wss://host/ws"
   * @param {object} options
   * @param {{ publicKey: string, privateKey: CryptoKey }} options.identity
   * @param {typeof WebSocket} [options.WebSocket] defaults to the global one
   * @param {{ initial?: number, max?: number }} [options.backoff] seconds (0.5, 30)
   * @param {() => number} [options.random] in [0, 1): the backoff's jitter
   * @param {() => number} [options.now] ms; stamps `retryAt`
   * @param {Function} [options.setTimeout]
   * @param {Function} [options.clearTimeout]
   * @param {{ info: Function, warn: Function, error: Function }} [options.logger]
   * @param {1 | 2} [options.version] 2: protocol version 2, with `record` and `follow`
   */
  constructor(
    url,
    {
      identity,
      WebSocket = globalThis.WebSocket,
      backoff: { initial = 0.5, max = 30 } = {},
      random = Math.random,
      now = Date.now,
      setTimeout = globalThis.setTimeout,
      clearTimeout = globalThis.clearTimeout,
      logger = console,
      version = 1,
      record,
      follow,
    } = {},
  ) {
    super();
    if (typeof identity?.publicKey !== "string" || !HEX64.test(identity.publicKey)) {
      throw new TypeError("LobbyClient needs an identity: see loadOrCreateIdentity()");
    }
    if (typeof WebSocket !== "function") {
      throw new TypeError("no WebSocket here: pass one, e.g. { WebSocket } from the ws package");
    }
    this.#url = url;
    this.#identity = { publicKey: identity.publicKey.toLowerCase(), privateKey: identity.privateKey };
    this.#WebSocket = WebSocket;
    this.#initialDelay = initial;
    this.#maxDelay = max;
    this.#random = random;
    this.#now = now;
    // Called without a receiver: browsers refuse timer functions called on other objects.
    this.#setTimeout = (callback, ms) => setTimeout(callback, ms);
    this.#clearTimeout = (timer) => clearTimeout(timer);
    this.#logger = logger;
    this.#wanted = WantedV2.forVersion(version, url, { record, follow });
    this.#view = this.#wanted ? new RecordView() : new LobbyView();
  }

  /** @returns {"connecting" | "online" | "reconnecting" | "replaced" | "closed"} */
  get status() {
    return this.#status;
  }

  /** @returns {LobbyView | RecordView} the lobby as last seen; live while "online". */
  get view() {
    return this.#view;
  }

  /** @returns {string} our public key, lowercase hex. */
  get publicKey() {
    return this.#identity.publicKey;
  }

  /**
   * Connects, and keeps connecting until online. Resolves once the server has
   * accepted us (`auth_ok`) and sent the first lobby snapshot. Rejects if the client
   * stops before that: `AuthFailed`, `ProtocolError`, `Ed25519Unsupported`, or
   * `ConnectionLost` (replaced, or `close()` called). While it is pending, and after,
   * `send` and `getLobby` may be used: they are written right behind the `auth`.
   * Calling it while connecting or online returns the same promise or resolves at once.
   * @returns {Promise<void>}
   */
  connect() {
    if (this.#status === "online") return Promise.resolve();
    if (!this.#connecting) {
      let settle;
      const promise = new Promise((resolve, reject) => {
        settle = { resolve, reject };
      });
      this.#connecting = { promise, ...settle };
      // While connecting or waiting to reconnect, an attempt is already under way.
      if (this.#status === "closed" || this.#status === "replaced") {
        this.#attempt = 0;
        this.#open();
      }
    }
    return this.#connecting.promise;
  }

  /**
   * Sends a direct message. Resolves with the server's final word on it:
   * `{ id, status: "delivered" | "offline" | "rejected", reason? }`.
   * Rejects with `ConnectionLost` at once when there is no connection (status
   * reconnecting, replaced or closed), or when the connection ends before the result
   * arrives; and with `TypeError` for an argument the server could not answer.
   * @param {string} to the recipient's public key (our own is allowed)
   * @param {string} body at most 65536 UTF-8 bytes, or the result is "rejected"
   * @param {{ id?: string }} [options] 1 to 64 characters; a fresh random one by default
   * @returns {Promise<{ id: string, status: string, reason?: string }>}
   */
  async send(to, body, { id = randomId() } = {}) {
    const conn = this.#requireConnection("send");
    checkSend(to, body, id);
    // Results are matched by id, so two sends awaiting results may not share one.
    if (conn.pending.has(id)) throw new TypeError(`send: id ${id} is already awaiting a result`);
    return new Promise((resolve, reject) => {
      conn.pending.set(id, { resolve, reject });
      this.#write(conn, { type: "send", to, id, body });
    });
  }

  /**
   * Asks the server for a fresh snapshot; a `sync` event follows.
   * @throws {ConnectionLost} when there is no connection
   */
  getLobby() {
    this.#write(this.#requireConnection("getLobby"), { type: "get_lobby" });
  }

  /** Version 2: changes our record (`{status?, data?}`), now and for later connections. */
  setRecord(record) {
    this.#ask(this.#v2("setRecord").setRecord(record));
  }

  /** Version 2: follows `{scope: "lobby"}`, `{scope: "watch", keys}` or `{scope: "count"}`. */
  follow(choice) {
    this.#request(this.#v2("follow").setFollow(choice));
  }

  /** Version 2: adds keys to the watchlist followed (`unwatch`: removes them). */
  watch(keys) {
    this.#request(this.#v2("watch").changeWatchlist("watch", keys));
  }

  unwatch(keys) {
    this.#request(this.#v2("unwatch").changeWatchlist("unwatch", keys));
  }

  /** Version 2: the choice asked for (a refused request is taken back). */
  get following() {
    return this.#wanted?.follow;
  }

  /** A scope request: written once the connection had auth_ok (lobby_core_v2.js). */
  #request(frame) {
    const conn = this.#conn;
    if (this.#wanted.request(frame, conn?.authOk === true)) this.#write(conn, frame);
  }

  #v2(what) {
    if (!this.#wanted) throw new TypeError(`${what} needs protocol version 2: { version: 2 }`);
    return this.#wanted;
  }

  #ask(frame) {
    if (this.#conn?.authWritten) this.#write(this.#conn, frame); // else the next auth asks
  }

  /** Closes the connection (code 1000) for good: status "closed", no reconnecting. */
  close() {
    if (this.#status === "closed") return;
    const reason = "closed by the app";
    this.#stop("closed", new ConnectionLost(`connection ${reason}`, { code: 1000 }), {
      code: 1000,
      reason,
    });
  }

  // -- Connections --------------------------------------------------------------

  #open() {
    this.#retryTimer = null;
    let ws;
    try {
      const v2 = this.#wanted !== null;
      ws = v2 ? new this.#WebSocket(this.#url, [SUBPROTOCOL]) : new this.#WebSocket(this.#url);
      if (v2) ws.binaryType = "arraybuffer"; // the lobby frames of version 2 are binary
    } catch (error) {
      this.#fatal(error); // a bad URL, or a page not allowed to open it: retrying won't help
      return;
    }
    const conn = {
      ws,
      challenged: false,
      authWritten: false,
      authOk: false,
      online: false,
      /** Frames written after the auth but before auth_ok. */
      pipelined: 0,
      outbox: [],
      /** Sends awaiting their results, by id. */
      pending: new Map(),
      /** Whether updates apply: a snapshot came and no update was refused since. */
      synced: false,
      snapshotRequested: false,
      authFailure: null,
    };
    this.#conn = conn;
    ws.onmessage = (event) => this.#conn === conn && this.#onFrame(conn, event.data);
    ws.onclose = (event) => this.#conn === conn && this.#onClose(conn, event.code, event.reason);
    // The close event that follows tells what happened; with the ws package an
    // 'error' event without a listener would also throw.
    ws.onerror = () => {};
    this.#setStatus("connecting");
  }

  #onClose(conn, code, reason) {
    this.#conn = null;
    this.#failPending(conn, `connection closed (${code})`, code);
    if (code === 4002) {
      this.#stop("replaced", new ConnectionLost(`replaced: ${REPLACED}`, { code }), {
        code,
        reason: REPLACED,
      });
    } else if (code === 4001) {
      const failure = new AuthFailed(conn.authFailure ?? reason);
      this.#logger.error(`lobby: ${failure.message}; not reconnecting`);
      this.#stop("closed", failure, { code, reason: failure.message });
    } else if (!reconnects(code)) {
      this.#logger.error(`lobby: closed with ${code} (${reason}); not reconnecting`);
      this.#stop("closed", new ConnectionLost(`closed with ${code} (${reason})`, { code }), {
        code,
        reason,
      });
    } else {
      this.#reconnect(code, reason);
    }
  }

  #reconnect(code, reason) {
    const retryIn = backoffDelay(this.#attempt, this.#random(), this.#initialDelay, this.#maxDelay);
    this.#attempt += 1;
    const [level, text] = reconnectNotice(code, reason, retryIn);
    this.#logger[level](text);
    this.#retryTimer = this.#setTimeout(() => this.#open(), retryIn * 1000);
    this.#setStatus("reconnecting", {
      code,
      reason,
      retryIn,
      retryAt: this.#now() + retryIn * 1000,
    });
  }

  /** Ends everything with a final status; `error` rejects a pending connect(). */
  #stop(status, error, detail) {
    const conn = this.#conn;
    this.#conn = null;
    if (conn) {
      this.#failPending(conn, error.message, detail.code);
      conn.ws.close(1000);
    }
    if (this.#retryTimer !== null) this.#clearTimeout(this.#retryTimer);
    this.#retryTimer = null;
    this.#setStatus(status, detail);
    this.#connecting?.reject(error);
    this.#connecting = null;
  }

  /** The server broke the handshake, or we cannot sign: stop, since a retry won't help. */
  #fatal(error) {
    this.#report(error, "error");
    this.#stop("closed", error, { code: null, reason: error.message });
  }

  #failPending(conn, why, code) {
    for (const [id, { reject }] of conn.pending) {
      const lost = `${why} before the result of send ${id} came; it may or may not have been delivered`;
      reject(new ConnectionLost(lost, { code }));
    }
    conn.pending.clear();
  }

  #requireConnection(what) {
    if (this.#conn) return this.#conn;
    throw new ConnectionLost(`${what}: not connected (status ${this.#status})`);
  }

  // -- Writing ------------------------------------------------------------------

  #write(conn, frame) {
    conn.outbox.push(frame);
    this.#flush(conn);
  }

  /** Writes what the handshake allows: nothing before the auth, 16 before auth_ok. */
  #flush(conn) {
    if (!conn.authWritten) return;
    while (conn.outbox.length > 0 && (conn.authOk || conn.pipelined < PIPELINE_LIMIT)) {
      if (!conn.authOk) conn.pipelined += 1;
      conn.ws.send(JSON.stringify(conn.outbox.shift()));
    }
  }

  // -- Reading ------------------------------------------------------------------

  #onFrame(conn, data) {
    let frame;
    try {
      if (this.#wanted) frame = decodeServerFrameV2(data);
      else if (typeof data === "string") frame = JSON.parse(data);
    } catch (error) {
      if (error instanceof ProtocolError) return this.#report(error); // else: not JSON, below
    }
    if (typeof frame?.type !== "string") {
      this.#report(new ProtocolError("the server sent a frame that is not a JSON object with a type"));
      return;
    }
    try {
      this.#dispatchFrame(conn, frame);
    } catch (error) {
      if (!(error instanceof ProtocolError)) throw error;
      this.#report(error);
    }
  }

  #dispatchFrame(conn, frame) {
    switch (frame.type) {
      case "challenge":
        return this.#onChallenge(conn, frame);
      case "auth_ok":
        return this.#onAuthOk(conn, frame);
      case "auth_failed":
        conn.authFailure = String(frame.reason); // close 4001 follows and ends it
        return;
      case "lobby_snapshot":
      case "snapshot":
      case "count": // the count scope's snapshot
        return this.#onSnapshot(conn, frame);
      case "lobby_update":
      case "update":
        return this.#onUpdate(conn, frame);
      case "message":
        return this.#onMessage(frame);
      case "send_result":
        return this.#onSendResult(conn, frame);
      case "error":
        return this.#onServerError(conn, frame);
      default:
        throw new ProtocolError(`the server sent a frame of unknown type ${frame.type}`);
    }
  }

  #onChallenge(conn, { version, nonce }) {
    if (conn.challenged) throw new ProtocolError("the server sent a second challenge");
    conn.challenged = true;
    const refusal = this.#wanted
      ? this.#wanted.refusal(conn.ws.protocol, version)
      : version !== PROTOCOL_VERSION && new ProtocolError(`the server speaks protocol ${version}, not 1`);
    if (refusal) return this.#fatal(refusal);
    if (typeof nonce !== "string" || !HEX64.test(nonce)) {
      return this.#fatal(new ProtocolError("the challenge's nonce is not 64 hex characters"));
    }
    this.#answerChallenge(conn, nonce);
  }

  /** Signs the nonce and writes the auth, then whatever waited for it. */
  async #answerChallenge(conn, nonce) {
    let auth;
    try {
      const { publicKey, privateKey } = this.#identity;
      const signature = () => sign(privateKey, authPayload(nonce)).then(toHex);
      auth = this.#wanted
        ? await this.#wanted.auth(this.#identity, nonce, this.#view)
        : JSON.stringify({ type: "auth", publicKey, signature: await signature() });
    } catch (error) {
      if (this.#conn === conn) this.#fatal(error);
      return;
    }
    if (this.#conn !== conn) return; // closed while we were signing
    conn.ws.send(auth);
    conn.authWritten = true;
    this.#flush(conn);
  }

  #onAuthOk(conn, { publicKey, resumed }) {
    if (publicKey !== this.#identity.publicKey) {
      return this.#fatal(new ProtocolError(`auth_ok names ${publicKey}, not our key`));
    }
    conn.authOk = true;
    conn.synced = resumed === true; // version 2: an update continues the view we hold
    for (const frame of this.#wanted?.afterAuthOk() ?? []) conn.outbox.push(frame);
    this.#flush(conn);
  }

  #onSnapshot(conn, frame) {
    if (!conn.authOk) throw new ProtocolError("a lobby snapshot came before auth_ok");
    this.#wanted?.viewed(frame.applied); // which choice the view is of
    try {
      (this.#wanted ? applyFrameV2 : applyLobbyFrame)(this.#view, frame); // a key twice: refused
    } catch (error) {
      if (!(error instanceof LobbyError)) throw error;
      return this.#resync(conn, error);
    }
    conn.synced = true;
    conn.snapshotRequested = false;
    this.#emit("sync", { seq: frame.seq, online: [...this.#view.online].sort() });
    const lobby = (this.#view.scope ?? "lobby") === "lobby"; // a watchlist need not list us
    if (lobby && !this.#view.online.has(this.#identity.publicKey)) {
      this.#report(new ProtocolError(`snapshot ${frame.seq} does not list us`));
    }
    // A listener may have closed the client meanwhile; then it must stay closed.
    if (this.#conn === conn && !conn.online) this.#goOnline(conn);
  }

  #goOnline(conn) {
    conn.online = true;
    this.#attempt = 0;
    this.#setStatus("online");
    this.#connecting?.resolve();
    this.#connecting = null;
  }

  #onUpdate(conn, frame) {
    if (!conn.synced) return; // a snapshot is on its way and will supersede this
    let change;
    try {
      change = (this.#wanted ? applyFrameV2 : applyLobbyFrame)(this.#view, frame);
    } catch (error) {
      if (!(error instanceof LobbyError)) throw error;
      return this.#resync(conn, error);
    }
    const { kind, ...detail } = change;
    for (const key of detail.left) this.#emit("leave", { key, seq: detail.seq });
    for (const key of detail.joined) this.#emit("join", { key, seq: detail.seq });
    this.#emit("update", detail);
    if (this.#conn === conn && !conn.online) this.#goOnline(conn); // a resumed view
  }

  /** Reports a refused lobby frame, stops applying updates, asks once for a snapshot. */
  #resync(conn, error) {
    conn.synced = false;
    this.#report(error);
    if (conn.snapshotRequested || this.#conn !== conn) return;
    conn.snapshotRequested = true;
    this.#logger.warn("lobby: resyncing: asking for a fresh snapshot until one comes");
    this.#write(conn, { type: "get_lobby" });
  }

  #onServerError(conn, { code, message, applied }) {
    if (this.#wanted && applied !== null && applied !== undefined) this.#wanted.refused(applied);
    this.#report(new ServerError(code, message));
    // Sends are refused through their results, so a rate-limited frame of ours was a
    // get_lobby; if it was the one a resync waits for, ask again a little later.
    if (code === "rate_limited" && conn.snapshotRequested) {
      this.#setTimeout(() => this.#conn === conn && this.#write(conn, { type: "get_lobby" }), 1000);
    }
  }

  #onMessage({ from, id, body }) {
    if (typeof from !== "string" || !HEX64.test(from) || typeof id !== "string" || typeof body !== "string") {
      throw new ProtocolError("a message frame without a valid from, id and body");
    }
    this.#emit("message", { from: from.toLowerCase(), id, body });
  }

  #onSendResult(conn, { id, status, reason }) {
    const waiter = conn.pending.get(id);
    if (!waiter) throw new ProtocolError(`a send_result for ${id}, which awaits none`);
    conn.pending.delete(id);
    waiter.resolve(reason === undefined ? { id, status } : { id, status, reason });
  }

  // -- Events -------------------------------------------------------------------

  #setStatus(status, { code = null, reason = null, retryIn = null, retryAt = null } = {}) {
    this.#status = status;
    this.#emit("status", { status, code, reason, retryIn, retryAt });
  }

  /** Logs a problem and tells listeners of the `error` event. */
  #report(error, level = "warn") {
    this.#logger[level](`lobby: ${error.message}`);
    this.#emit("error", { error });
  }

  #emit(type, detail) {
    this.dispatchEvent(new CustomEvent(type, { detail }));
  }
}

/** The keys of a lobby frame's list of `{ publicKey }`, lowercase. */
