/**
 * page_state.js: the lobby page's state that needs no DOM, no socket and no clock, so
 * that node --test can hold it to its rules (tests/js/page_state.test.js): what a user's
 * entry says, the profile (display name and status) a user sets, the conversations
 * (one per key, with unread counts and the selected one), and whether the view shown is
 * live or stale. page.js draws it.
 *
 * Names and statuses are whatever their owners typed: they are returned as strings for
 * `textContent`, never as markup, and the key prefix always goes with them, since a name
 * says nothing about who someone is.
 *
 * @module page_state
 */

import { checkRecord } from "./protocol_v2.js";

/** Entries kept per conversation: the oldest go first. */
export const MAX_THREAD_ITEMS = 500;

/** The statuses offered by name; anything else is a custom status. */
export const PRESET_STATUSES = Object.freeze(["online", "away", "busy"]);

/** The first 8 hex characters of a key and an ellipsis: how a key is shown. */
export function shortKey(key) {
  return key.length > 8 ? `${key.slice(0, 8)}…` : key;
}

/** The display name in a record's data, or "" when it has none (or not a string). */
export function displayName(record) {
  const name = record?.data?.name;
  return typeof name === "string" ? name : "";
}

/**
 * What a user's entry in the list says: `{name, key, status, mine}`, all plain strings
 * but `mine`. `record` is undefined in version 1, which has no names or statuses.
 */
export function entryText(key, record, me) {
  return {
    name: displayName(record),
    key: shortKey(key),
    status: record?.status ?? "",
    mine: key === me,
  };
}

/** "Ada (03a107bf…)" or "03a107bf… (not online)": who the send box writes to. */
export function recipientText(key, record, online) {
  const name = displayName(record);
  const who = name ? `${name} (${shortKey(key)})` : shortKey(key);
  return online ? who : `${who} (not online)`;
}

// -- The profile: display name and status ---------------------------------------------

/**
 * The record a profile asks for: `{status, data}`, with `data.name` only when the name
 * is not empty. `status` is the custom text when `choice` is "custom".
 */
export function profileRecord({ name = "", choice = "online", custom = "" } = {}) {
  const status = choice === "custom" ? custom : choice;
  return { status, data: name === "" ? {} : { name } };
}

/**
 * Why a profile cannot be set (a sentence for the form), or null. The rules are the
 * protocol's (protocol_v2.js `checkRecord`): a status of 1 to 32 bytes without control
 * characters, data of at most 255 bytes in compact JSON.
 */
export function profileProblem(profile) {
  if (profile.choice === "custom" && profile.custom === "") return "Type a custom status.";
  const problem = checkRecord(profileRecord(profile));
  if (problem === null) return null;
  return problem.startsWith("data") ? `The name is too long (${problem}).` : `The ${problem}.`;
}

/** A profile read back from storage: `{name, choice, custom}` when it is still valid, else null. */
export function parseProfile(text) {
  let profile;
  try {
    profile = JSON.parse(text);
  } catch {
    return null;
  }
  if (profile === null || typeof profile !== "object" || Array.isArray(profile)) return null;
  const { name = "", choice = "online", custom = "" } = profile;
  const fields = { name, choice, custom };
  if (![name, choice, custom].every((value) => typeof value === "string")) return null;
  if (![...PRESET_STATUSES, "custom"].includes(choice)) return null;
  return profileProblem(fields) === null ? fields : null;
}

/** The sentence shown for a server's refusal of a record (`error` codes of version 2). */
export function recordErrorText(code) {
  switch (code) {
    case "bad_record":
      return "The server refused that name or status (bad_record).";
    case "rate_limited":
      return "Too many changes: wait a moment and set it again (rate_limited).";
    default:
      return null;
  }
}

// -- Conversations ------------------------------------------------------------------

/**
 * Direct messages, one conversation per key: what was sent (with its result, once it
 * came) and what was received, in order. One conversation is selected (the send box's
 * recipient); a message into another counts as unread there until it is selected.
 */
export class Conversations {
  /** @type {string | null} */ selected = null;
  #threads = new Map(); // key → entries
  #unread = new Map(); // key → count

  /** The entries of `key`'s conversation, oldest first (do not change them). */
  thread(key) {
    return this.#threads.get(key) ?? [];
  }

  unread(key) {
    return this.#unread.get(key) ?? 0;
  }

  /** Selects `key`'s conversation (null: none) and marks it read; returns whether it changed. */
  select(key) {
    const changed = key !== this.selected;
    this.selected = key;
    if (key !== null) this.#unread.delete(key);
    return changed;
  }

  /** A message we sent, awaiting its result; returns its entry. */
  sent(to, id, body) {
    return this.#add(to, { way: "out", id, body, status: "sending", reason: undefined });
  }

  /** The result of a send: delivered, offline, rejected (with a reason) or failed. */
  result(to, id, status, reason) {
    const entry = this.thread(to).find((item) => item.way === "out" && item.id === id);
    if (!entry) return null; // dropped as too old meanwhile
    Object.assign(entry, { status, reason });
    return entry;
  }

  /** A message received. The first one, while nothing is selected, selects its sender. */
  received(from, id, body) {
    if (this.selected === null) this.selected = from;
    const entry = this.#add(from, { way: "in", id, body });
    if (from !== this.selected) this.#unread.set(from, this.unread(from) + 1);
    return entry;
  }

  #add(key, entry) {
    let thread = this.#threads.get(key);
    if (!thread) this.#threads.set(key, (thread = []));
    thread.push(entry);
    if (thread.length > MAX_THREAD_ITEMS) thread.shift();
    return entry;
  }
}

/** What a sent entry says once its result came: "delivered", "rejected (too_large)"… */
export function resultText({ status, reason }) {
  if (status === "sending") return "sending…";
  return reason === undefined ? status : `${status} (${reason})`;
}

// -- Live or stale ------------------------------------------------------------------

/**
 * Why the view shown is not live, or null when it is: `{why, note}` with `why` one of
 * "connecting", "reconnecting", "replaced", "closed", "resyncing" (a refused update: a
 * snapshot is on its way).
 */
export function staleness(status, resyncing) {
  switch (status) {
    case "online":
      return resyncing
        ? { why: "resyncing", note: "Catching up: the list may be out of date for a moment." }
        : null;
    case "reconnecting":
      return { why: "reconnecting", note: "Connection lost: the list is as last seen." };
    case "replaced":
      return {
        why: "replaced",
        note: "Another tab or device took over this identity: this page is no longer live.",
      };
    case "closed":
      return { why: "closed", note: "Not connected: the list is as last seen." };
    default:
      return { why: status, note: "Connecting…" };
  }
}
