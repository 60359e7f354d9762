/**
 * protocol_v2.js: the pure codec of protocol version 2 for JavaScript (browsers and
 * Node.js 20+): no sockets, no timers, no storage, no crypto.
 *
 * Theory of operation. A v2 client offers the WebSocket subprotocol `presence.v2`;
 * it sends JSON text frames and receives JSON text frames, except the lobby frames
 * `snapshot` and `update`, which are binary. This module is the JavaScript half of a
 * contract whose Python half is shared/v2; both are held to tests/vectors/auth_v2.json
 * and tests/vectors/frames_v2.json.
 *
 * - `serverIdentity(url)`: the canonical text of the URL the client dialed, which the
 *   v2 signature covers (so an `auth` is worthless to any other server). The WHATWG
 *   URL parser does most of it (lowercase, punycode, IPv4 and IPv6 forms, dot
 *   segments); the rest is written here: no trailing dot, the port always, uppercase
 *   hex after `%`, and refusals for what Python's side cannot agree on.
 * - `signedPayloadV2(identity, nonceHex)`: the bytes to sign (identity.js `signV2`
 *   signs them with WebCrypto).
 * - Records: `checkStatus`, `compactData`, `checkRecord`, the rules a status and data
 *   follow (the server re-encodes data compactly and counts its UTF-8 bytes).
 * - `encode*`: the client frames, as text; they write what they are given.
 * - `decodeServerFrameV2(data)`: any server frame (a string, or an ArrayBuffer or
 *   typed array for binary frames) into a plain object, or a `ProtocolError`, and
 *   nothing else, for any input. Binary frames decode to
 *   `{type: "snapshot", epoch, seq, scope, applied, entries}` and
 *   `{type: "update", seq, prev, joined, updated, left}`, each entry
 *   `{key, status, data}` (keys lowercase hex, data a parsed object). `applied` (in a
 *   snapshot, a count, and an error refusing a scope request; null in other errors)
 *   counts the connection's scope requests the server applied.
 *
 * @module protocol_v2
 */

import { HEX64, LobbyError, ProtocolError, fromHex, toHex } from "./lobby_core.js";

export const SUBPROTOCOL = "presence.v2";
export const PROTOCOL_VERSION_2 = 2;
export const STATUS_CODES = Object.freeze({ online: 0, away: 1, busy: 2 });
const STATUS_NAMES = ["online", "away", "busy"];
const CUSTOM_STATUS = 3;
export const MAX_STATUS_BYTES = 32;
export const MAX_DATA_BYTES = 255;
export const MAX_WATCH_KEYS = 1000;
export const SEQ_LIMIT = 2 ** 53;
const SNAPSHOT = 0x01;
const UPDATE = 0x02;
const SCOPES = ["lobby", "watch"];
const DATA_FLAG = 0x80;
const RESERVED_FLAGS = 0x7c;
const KEY_BYTES = 32;
const DEFAULT_PORTS = { ws: 80, wss: 443 };
const AUTH_PREFIX_V2 = new TextEncoder().encode("presence-auth-v2\n");

const encoder = new TextEncoder();
const strictUtf8 = new TextDecoder("utf-8", { fatal: true, ignoreBOM: true });
const utf8Length = (text) => encoder.encode(text).length;

/** A URL that has no server identity; the message names the problem. */
export class BadServerUrl extends LobbyError {}

// ---------------------------------------------------------------------------------
// Server identity and the signed payload

/**
 * The canonical identity of a `ws`/`wss` URL: `scheme://host:port/path`.
 * @param {string} url
 * @returns {string}
 * @throws {BadServerUrl}
 */
export function serverIdentity(url) {
  const show = JSON.stringify(url);
  if (typeof url !== "string") throw new BadServerUrl(`a server URL must be a string`);
  if (url.includes("\\")) throw new BadServerUrl(`server URL ${show}: a backslash is not allowed`);
  const start = /^[\u0000-\u0020]*([a-z][a-z0-9+.-]*):(\/\/)?([^/?#]*)/i.exec(url);
  const scheme = start?.[1].toLowerCase();
  if (!start || !(scheme in DEFAULT_PORTS)) {
    throw new BadServerUrl(`server URL ${show}: the scheme must be ws or wss`);
  }
  if (!start[2] || start[3] === "") throw new BadServerUrl(`server URL ${show}: no host`);
  // IDNA 2003 (Python's) and UTS 46 (browsers') map these differently.
  if (/[\u00df\u03c2\u200c\u200d]/.test(start[3].toLowerCase())) {
    throw new BadServerUrl(
      `server URL ${show}: the host has a character IDNA versions map differently ` +
        `(ß, ς, ZWJ, ZWNJ): write the host in its ASCII (xn--) form`,
    );
  }
  let parsed;
  try {
    parsed = new URL(url);
  } catch (error) {
    throw new BadServerUrl(`server URL ${show}: not a valid URL (${error.message})`);
  }
  let host = parsed.hostname;
  if (host.endsWith(".")) host = host.slice(0, -1);
  const bracketed = host.startsWith("[");
  if (!host || (!bracketed && (!/^[a-z0-9_.-]+$/.test(host) || /^\.|\.\.|\.$/.test(host)))) {
    throw new BadServerUrl(`server URL ${show}: ${JSON.stringify(host)} is not a host`);
  }
  const port = parsed.port || DEFAULT_PORTS[scheme];
  const path = parsed.pathname.replace(/%[0-9a-f]{2}/gi, (escape) => escape.toUpperCase());
  return `${scheme}://${host}:${port}${path || "/"}`;
}

/**
 * The bytes a v2 client signs: "presence-auth-v2\n", the identity, "\n", the nonce.
 * @param {string} identity from `serverIdentity`
 * @param {string} nonceHex the challenge's nonce, 64 hex characters
 * @returns {Uint8Array}
 */
export function signedPayloadV2(identity, nonceHex) {
  const id = encoder.encode(identity);
  const nonce = fromHex(nonceHex);
  const payload = new Uint8Array(AUTH_PREFIX_V2.length + id.length + 1 + nonce.length);
  payload.set(AUTH_PREFIX_V2, 0);
  payload.set(id, AUTH_PREFIX_V2.length);
  payload[AUTH_PREFIX_V2.length + id.length] = 0x0a;
  payload.set(nonce, AUTH_PREFIX_V2.length + id.length + 1);
  return payload;
}

// ---------------------------------------------------------------------------------
// Records

const CONTROL = /[\u0000-\u001f\u007f-\u009f]/;
const LONE_SURROGATE = /[\ud800-\udfff]/u;

/**
 * Why `value` is not a status, or null: a string of 1-32 bytes of UTF-8 without
 * control characters (U+0000-U+001F, U+007F-U+009F). "online", "away" and "busy" are named.
 * @param {unknown} value
 * @returns {string | null}
 */
export function checkStatus(value) {
  if (typeof value !== "string") return "status must be a string";
  if (LONE_SURROGATE.test(value)) return "status is not valid Unicode (a lone surrogate)";
  const size = utf8Length(value);
  if (size < 1 || size > MAX_STATUS_BYTES) {
    return `status must be 1-${MAX_STATUS_BYTES} bytes of UTF-8, not ${size}`;
  }
  if (CONTROL.test(value)) return "status holds a control character";
  return null;
}

const isObject = (value) => typeof value === "object" && value !== null && !Array.isArray(value);

/**
 * The compact JSON of a data object, as the server re-encodes it.
 * @param {unknown} value
 * @returns {string}
 * @throws {RangeError} when `value` is not an object or encodes to over 255 bytes
 */
export function compactData(value) {
  if (!isObject(value)) throw new RangeError("data must be a JSON object");
  const text = JSON.stringify(value);
  const size = utf8Length(text);
  if (size > MAX_DATA_BYTES) {
    throw new RangeError(`data must encode to at most ${MAX_DATA_BYTES} bytes, not ${size}`);
  }
  return text;
}

/**
 * Why `record` (`{status?, data?}`, as in `auth` and `set_record`) is not valid, or null.
 * @param {unknown} record
 * @returns {string | null}
 */
export function checkRecord(record) {
  if (!isObject(record)) return "record must be a JSON object";
  if ("status" in record) {
    const problem = checkStatus(record.status);
    if (problem) return problem;
  }
  if ("data" in record) {
    try {
      compactData(record.data);
    } catch (error) {
      return error.message;
    }
  }
  return null;
}

// ---------------------------------------------------------------------------------
// Client frames

function followFields(follow) {
  return follow.scope === "watch" ? { scope: "watch", keys: follow.keys } : { scope: follow.scope };
}

/**
 * The v2 `auth` frame.
 * @param {{publicKey: string, signature: string, server: string,
 *   record?: {status?: string, data?: object}, follow?: {scope: string, keys?: string[]},
 *   resume?: {epoch: string, seq: number}}} fields
 * @returns {string}
 */
export function encodeAuthV2({ publicKey, signature, server, record, follow, resume }) {
  const frame = { type: "auth", publicKey, signature, server };
  if (record !== undefined) frame.record = record;
  if (follow !== undefined) frame.follow = followFields(follow);
  if (resume !== undefined) frame.resume = { epoch: resume.epoch, seq: resume.seq };
  return JSON.stringify(frame);
}

/** `set_record`: the fields given change, the others keep their value. */
export function encodeSetRecord({ status, data } = {}) {
  return JSON.stringify({ type: "set_record", status, data });
}

/** `follow`: `{scope: "lobby"}`, `{scope: "watch", keys}` or `{scope: "count"}`. */
export function encodeFollow(follow) {
  return JSON.stringify({ type: "follow", ...followFields(follow) });
}

export function encodeWatch(keys) {
  return JSON.stringify({ type: "watch", keys });
}

export function encodeUnwatch(keys) {
  return JSON.stringify({ type: "unwatch", keys });
}

export function encodeGetLobby() {
  return '{"type":"get_lobby"}';
}

export function encodeSend(to, id, body) {
  return JSON.stringify({ type: "send", to, id, body });
}

// ---------------------------------------------------------------------------------
// Server frames

/**
 * Decodes one v2 server frame.
 * @param {string | ArrayBuffer | ArrayBufferView} data
 * @returns {object}
 * @throws {ProtocolError} for anything that is not a well-formed v2 server frame
 */
export function decodeServerFrameV2(data) {
  if (typeof data === "string") return decodeText(data);
  let bytes;
  if (data instanceof ArrayBuffer) bytes = new Uint8Array(data);
  else if (ArrayBuffer.isView(data)) {
    bytes = new Uint8Array(data.buffer, data.byteOffset, data.byteLength);
  } else throw new ProtocolError("a frame must be a string or binary data");
  return new BinaryReader(bytes).frame();
}

class BinaryReader {
  constructor(bytes) {
    this.bytes = bytes;
    this.view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
    this.pos = 0;
  }

  take(n) {
    if (this.pos + n > this.bytes.length) {
      throw new ProtocolError(`a binary frame cut short: ${n} bytes wanted at offset ${this.pos}`);
    }
    const chunk = this.bytes.subarray(this.pos, this.pos + n);
    this.pos += n;
    return chunk;
  }

  u8() {
    return this.take(1)[0];
  }

  u32() {
    const at = this.take(4).byteOffset - this.bytes.byteOffset;
    return this.view.getUint32(at);
  }

  seq(name) {
    const at = this.take(8).byteOffset - this.bytes.byteOffset;
    const hi = this.view.getUint32(at);
    const lo = this.view.getUint32(at + 4);
    if (hi >= 2 ** 21) throw new ProtocolError(`${name} is not below 2**53`);
    return hi * 2 ** 32 + lo;
  }

  frame() {
    const kind = this.u8();
    let message;
    if (kind === SNAPSHOT) message = this.snapshot();
    else if (kind === UPDATE) message = this.update();
    else throw new ProtocolError(`unknown binary frame type 0x${kind.toString(16)}`);
    if (this.pos !== this.bytes.length) {
      const extra = this.bytes.length - this.pos;
      throw new ProtocolError(`${message.type}: ${extra} bytes after the frame's end`);
    }
    return message;
  }

  snapshot() {
    const raw = this.take(this.u8());
    if (!raw.length || raw.some((b) => b < 0x21 || b > 0x7e)) {
      throw new ProtocolError("snapshot: the epoch is not 1-255 characters of printable ASCII");
    }
    const epoch = String.fromCharCode(...raw);
    const seq = this.seq("snapshot: seq");
    const scope = SCOPES[this.u8()];
    if (scope === undefined) throw new ProtocolError("snapshot: unknown scope code");
    const applied = this.u32();
    return { type: "snapshot", epoch, seq, scope, applied, entries: this.entries() };
  }

  update() {
    const seq = this.seq("update: seq");
    const prev = this.seq("update: prev");
    if (seq < prev) throw new ProtocolError(`update: seq ${seq} below prev ${prev}`);
    const joined = this.entries();
    const updated = this.entries();
    const left = [];
    for (let n = this.u32(); n > 0; n--) left.push(toHex(this.take(KEY_BYTES)));
    return { type: "update", seq, prev, joined, updated, left };
  }

  entries() {
    const entries = [];
    for (let n = this.u32(); n > 0; n--) entries.push(this.entry());
    return entries;
  }

  entry() {
    const key = toHex(this.take(KEY_BYTES));
    const flags = this.u8();
    const where = `entry ${key.slice(0, 8)}`;
    if (flags & RESERVED_FLAGS) throw new ProtocolError(`${where}: reserved flag bits set`);
    let status = STATUS_NAMES[flags & 0x03];
    if ((flags & 0x03) === CUSTOM_STATUS) {
      status = utf8(this.take(this.u8()), `${where}: status`);
      const problem = checkStatus(status);
      if (problem) throw new ProtocolError(`${where}: ${problem}`);
    }
    let data = {};
    if (flags & DATA_FLAG) {
      const text = utf8(this.take(this.u8()), `${where}: data`);
      try {
        data = JSON.parse(text);
      } catch {
        data = null;
      }
      if (!isObject(data)) throw new ProtocolError(`${where}: data is not a JSON object`);
    }
    return { key, status, data };
  }
}

function utf8(bytes, what) {
  try {
    return strictUtf8.decode(bytes);
  } catch {
    throw new ProtocolError(`${what} is not UTF-8`);
  }
}

const isEpoch = (value) => typeof value === "string" && /^[\x21-\x7e]{1,255}$/.test(value);
const isSeq = (value) => Number.isSafeInteger(value) && value >= 0;

class Fields {
  constructor(type, obj) {
    this.type = type;
    this.obj = obj;
  }

  fail(what) {
    return new ProtocolError(`${this.type}: ${what}`);
  }

  text(name) {
    const value = this.obj[name];
    if (typeof value !== "string") throw this.fail(`field ${name} missing or not a string`);
    return value;
  }

  key(name) {
    const value = this.text(name);
    if (!HEX64.test(value)) throw this.fail(`field ${name} is not 64 hex characters`);
    return value.toLowerCase();
  }

  epoch() {
    const value = this.obj.epoch;
    if (!isEpoch(value)) throw this.fail("epoch is not 1-255 characters of printable ASCII");
    return value;
  }

  seq(name) {
    const value = this.obj[name];
    if (!isSeq(value)) throw this.fail(`${name} is not an integer in [0, 2**53)`);
    return value;
  }

  applied() {
    const value = this.obj.applied;
    if (!Number.isInteger(value) || value < 0 || value >= 2 ** 32) {
      throw this.fail("applied is not an integer in [0, 2**32)");
    }
    return value;
  }
}

const SEND_STATUSES = new Set(["delivered", "offline", "rejected"]);
const REJECT_REASONS = new Set(["too_large", "invalid_recipient", "rate_limited", "unavailable"]);

const TEXT_DECODERS = {
  challenge: (f) => {
    if (!Number.isInteger(f.obj.version)) throw f.fail("version is not an integer");
    return { type: "challenge", nonce: f.key("nonce"), version: f.obj.version };
  },
  auth_ok: (f) => {
    if (typeof f.obj.resumed !== "boolean") throw f.fail("resumed is not a boolean");
    return {
      type: "auth_ok",
      publicKey: f.key("publicKey"),
      epoch: f.epoch(),
      seq: f.seq("seq"),
      resumed: f.obj.resumed,
    };
  },
  auth_failed: (f) => ({ type: "auth_failed", reason: f.text("reason") }),
  count: (f) => ({
    type: "count",
    epoch: f.epoch(),
    seq: f.seq("seq"),
    online: f.seq("online"),
    applied: f.applied(),
  }),
  error: (f) => ({
    type: "error",
    code: f.text("code"),
    message: f.text("message"),
    applied: "applied" in f.obj ? f.applied() : null,
  }),
  message: (f) => ({
    type: "message",
    from: f.key("from"),
    id: f.text("id"),
    body: f.text("body"),
  }),
  send_result: (f) => {
    const status = f.text("status");
    if (!SEND_STATUSES.has(status)) throw f.fail(`unknown status ${JSON.stringify(status)}`);
    const result = { type: "send_result", id: f.text("id"), status };
    if ((status === "rejected") !== ("reason" in f.obj)) {
      throw f.fail("a reason goes with status rejected, and only with it");
    }
    if (status === "rejected") {
      result.reason = f.text("reason");
      if (!REJECT_REASONS.has(result.reason)) throw f.fail("unknown rejection reason");
    }
    return result;
  },
};

function decodeText(text) {
  let obj;
  try {
    obj = JSON.parse(text);
  } catch (error) {
    throw new ProtocolError(`not JSON (${error.message})`);
  }
  if (!isObject(obj)) throw new ProtocolError("not a JSON object");
  if (typeof obj.type !== "string") throw new ProtocolError("field type missing or not a string");
  const decode = Object.hasOwn(TEXT_DECODERS, obj.type) ? TEXT_DECODERS[obj.type] : undefined;
  if (!decode) {
    throw new ProtocolError(`unknown frame type ${JSON.stringify(obj.type.slice(0, 40))}`);
  }
  return decode(new Fields(obj.type, obj));
}
