// The lobby page's script (loaded by index.html as a module, so that the page's
// content security policy can forbid inline scripts). See index.html for what the page
// shows, its query parameters and what tests may rely on. What needs no DOM (entries'
// text, the profile's rules, conversations, staleness) is in page_state.js.
import {
  AuthFailed,
  DuplicateUpdate,
  Ed25519Unsupported,
  InconsistentSnapshot,
  InconsistentUpdate,
  LobbyClient,
  NotVersion2,
  SequenceGap,
  ServerError,
  loadOrCreateIdentity,
} from "./lobby.js";
import {
  Conversations,
  entryText,
  parseProfile,
  profileProblem,
  profileRecord,
  recipientText,
  recordErrorText,
  resultText,
  shortKey,
  staleness,
} from "./page_state.js";
import { lacksVersion2 } from "./version_probe.js";

const FLASH_MS = 1500;
const HEX64 = /^[0-9a-f]{64}$/;
/** The view errors after which the client asks for a snapshot: the list is stale till then. */
const VIEW_ERRORS = [SequenceGap, DuplicateUpdate, InconsistentUpdate, InconsistentSnapshot];

const $ = (id) => document.getElementById(id);
const statusLine = $("status");
const usersList = $("users");
const thread = $("thread");
const params = new URLSearchParams(location.search);

let markReady;
let failReady;
const ready = new Promise((resolve, reject) => {
  markReady = resolve;
  failReady = reject;
});
ready.catch(() => {}); // shown on the page; tests that await it still see it fail
/** `version`: 2 until a server without version 2 is met, then 1 for the page's life. */
const lobby = { client: null, ready, applied: 0, version: 2 };
const timings = { loadToOnlineMs: null, lastApplyMs: null };
window.lobby = lobby;
window.lobbyTimings = timings;

const conversations = new Conversations();
let identity = null;
let resyncing = false;

// -- Status ------------------------------------------------------------------

let countdown = null;

function statusText({ status, reason, retryAt }) {
  switch (status) {
    case "connecting":
      return "connecting…";
    case "reconnecting":
      return `reconnecting in ${Math.max(0, Math.ceil((retryAt - Date.now()) / 1000))} s`;
    case "replaced":
      return "replaced: this identity was opened elsewhere";
    case "closed":
      return reason ? `closed: ${reason}` : "closed";
    default:
      return status;
  }
}

function showStatus(detail) {
  clearInterval(countdown);
  statusLine.textContent = statusText(detail);
  statusLine.dataset.status = detail.status;
  document.documentElement.dataset.status = detail.status;
  const ended = detail.status === "replaced" || detail.status === "closed";
  $("reconnect").hidden = !(ended && lobby.client);
  if (detail.status === "reconnecting") {
    countdown = setInterval(() => (statusLine.textContent = statusText(detail)), 1000);
  }
  showStaleness();
}

/** Dims what is shown while it is not live, and says why. */
function showStaleness() {
  const stale = staleness(lobby.client?.status ?? "connecting", resyncing);
  const main = document.querySelector("main");
  if (stale) main.dataset.stale = stale.why;
  else delete main.dataset.stale;
  $("stale-note").textContent = stale?.note ?? "";
  $("stale-note").hidden = !stale;
}

/** connect() or the start failed; once there is a client, its status says why. */
function showFailure(error) {
  console.error(error);
  const unsupported = error instanceof Ed25519Unsupported;
  if (unsupported) {
    $("error").textContent = error.message;
    $("error").hidden = false;
  }
  if (!lobby.client) {
    showStatus({ status: "closed", reason: unsupported ? "this browser cannot sign here" : error.message });
  }
  failReady(error);
}

// -- Who is online -------------------------------------------------------------
// The list mirrors client.view. Events only mark keys as touched; one DOM pass per
// animation frame then brings each touched key's item in line with the view, so a
// burst of updates costs one pass, and keys stay sorted by binary search.

const items = new Map(); // key → li
let sortedKeys = [];
let snapshotKeys = null; // a snapshot not yet rendered, sorted
const touched = new Set(); // keys that joined or left since the last pass
const changed = new Set(); // keys whose record (version 2) or unread count changed
let framesPending = 0;
let scheduled = false;
const itemTemplate = document.createElement("li");
itemTemplate.setAttribute("role", "option");
itemTemplate.tabIndex = 0;
itemTemplate.setAttribute("aria-selected", "false");
for (const part of ["name", "key", "presence", "you", "unread"]) {
  const element = document.createElement(part === "name" ? "bdi" : "span");
  element.className = part;
  itemTemplate.append(element, " "); // spaced as text too: read aloud and copied as words
}

const record = (key) => lobby.client?.view.records?.get(key); // version 2 only

/** Sets a text only when it differs: a new item's many empty parts cost nothing. */
function setText(element, text) {
  if (element.textContent !== text) element.textContent = text; // never parsed as HTML
}

/** Brings an item's text in line with the key's record and conversation. */
function fill(item) {
  const key = item.dataset.key;
  const text = entryText(key, record(key), lobby.client.publicKey);
  const [name, keyPart, presence, you, unread] = item.children;
  setText(name, text.name); // untrusted, as the status: text only
  setText(keyPart, text.key);
  setText(presence, text.status);
  setText(you, text.mine ? "(you)" : "");
  const count = conversations.unread(key);
  setText(unread, count ? String(count) : "");
  if (count) {
    unread.title = `${count} unread`;
    item.dataset.unread = String(count);
  } else if (item.dataset.unread !== undefined) {
    unread.title = "";
    delete item.dataset.unread;
  }
  const selected = key === conversations.selected;
  if (selected || item.getAttribute("aria-selected") !== "false") {
    item.setAttribute("aria-selected", String(selected));
  }
  if (selected) showRecipient();
}

function newItem(key, me) {
  const item = itemTemplate.cloneNode(true);
  item.dataset.key = key;
  item.title = key;
  if (key === me) item.className = "me";
  items.set(key, item);
  fill(item);
  return item;
}

function lowerBound(keys, key) {
  let low = 0;
  let high = keys.length;
  while (low < high) {
    const middle = (low + high) >>> 1;
    if (keys[middle] < key) low = middle + 1;
    else high = middle;
  }
  return low;
}

function renderAll(keys, me) {
  items.clear();
  sortedKeys = [...keys]; // ours to splice; the event's array is not
  const fragment = document.createDocumentFragment();
  for (const key of keys) fragment.append(newItem(key, me));
  usersList.replaceChildren(fragment);
}

function insertItem(key, me) {
  const index = lowerBound(sortedKeys, key);
  sortedKeys.splice(index, 0, key);
  const next = sortedKeys[index + 1];
  return usersList.insertBefore(newItem(key, me), next === undefined ? null : items.get(next));
}

function removeItem(key, item) {
  sortedKeys.splice(lowerBound(sortedKeys, key), 1);
  items.delete(key);
  item.remove();
}

/** Highlights items for a moment; the stylesheet fades them back. */
function flash(flashed) {
  for (const item of flashed) item.classList.add("joined");
  setTimeout(() => flashed.forEach((item) => item.classList.remove("joined")), FLASH_MS);
}

function showActivity(joined, left) {
  if (joined.length + left.length === 0) return;
  const names = (keys, sign) => keys.map((key) => sign + shortKey(key));
  const counts = [
    ...(joined.length ? [`+${joined.length} joined`] : []),
    ...(left.length ? [`−${left.length} left`] : []),
  ];
  $("activity").textContent =
    joined.length + left.length <= 4
      ? [...names(joined, "+"), ...names(left, "−")].join("  ")
      : counts.join(", ");
}

function schedule() {
  if (scheduled) return;
  scheduled = true;
  // Hidden tabs get no animation frames; they still keep the list current.
  if (document.hidden) setTimeout(render, 100);
  else requestAnimationFrame(render);
}

function render() {
  scheduled = false;
  const { client } = lobby;
  const started = performance.now();
  if (snapshotKeys) {
    renderAll(snapshotKeys, client.publicKey);
    snapshotKeys = null;
    changed.clear(); // every item was just filled
  }
  const joined = [];
  const left = [];
  const flashed = [];
  for (const key of touched) {
    const item = items.get(key);
    if (client.view.online.has(key)) {
      // New, or back after a reconnection (left and joined): show it either way.
      flashed.push(item ?? insertItem(key, client.publicKey));
      joined.push(key);
    } else if (item) {
      removeItem(key, item);
      left.push(key);
    }
  }
  for (const key of [...changed, ...touched]) {
    const item = items.get(key);
    if (item) fill(item);
  }
  touched.clear();
  changed.clear();
  flash(flashed);
  showActivity(joined, left);
  showRecipient();
  $("count").textContent = String(sortedKeys.length);
  lobby.applied += framesPending;
  framesPending = 0;
  timings.lastApplyMs = performance.now() - started;
  if (timings.loadToOnlineMs === null && client.status === "online") {
    timings.loadToOnlineMs = performance.now();
    markReady();
  }
}

function watchLobby(client) {
  const current = (listener) => (event) => client === lobby.client && listener(event.detail);
  client.addEventListener(
    "sync",
    current((detail) => {
      snapshotKeys = detail.online;
      touched.clear(); // the snapshot already holds these changes
      resyncing = false;
      showStaleness();
      schedule();
    }),
  );
  client.addEventListener("join", current(({ key }) => touched.add(key)));
  client.addEventListener("leave", current(({ key }) => touched.add(key)));
  client.addEventListener(
    "update",
    current(({ updated = [] }) => {
      for (const key of updated) changed.add(key);
      framesPending += 1;
      schedule();
    }),
  );
  client.addEventListener("status", current(showStatus));
  client.addEventListener("status", current((detail) => probeVersion(client, detail)));
  client.addEventListener("message", current(showMessage));
  client.addEventListener("error", current(({ error }) => onClientError(client, error)));
}

function onClientError(client, error) {
  if (error instanceof NotVersion2) {
    fallBackToVersion1(client);
  } else if (wrongServer(error)) {
    fallBackToVersion1(client, WRONG_SERVER_NOTE);
  } else if (VIEW_ERRORS.some((kind) => error instanceof kind)) {
    resyncing = true; // a snapshot is asked for; its sync ends this
    showStaleness();
  } else if (error instanceof ServerError && recordErrorText(error.code)) {
    showProfileError(recordErrorText(error.code));
  }
}

// -- Selection and conversations --------------------------------------------------

function select(key) {
  const before = conversations.selected;
  if (conversations.select(key)) showSelection(before);
}

/** Marks the selected entry, fills the send box, draws its conversation. */
function showSelection(before) {
  const key = conversations.selected;
  for (const other of [before, key]) {
    const item = other === null ? undefined : items.get(other);
    if (item) fill(item);
  }
  if ($("send-to").value.trim().toLowerCase() !== key) $("send-to").value = key ?? "";
  showRecipient();
  showThread();
}

/** The send box says who it writes to. */
function showRecipient() {
  const key = conversations.selected;
  const line = $("recipient");
  if (key === null) {
    line.textContent = "Pick someone in the list, or paste a key.";
    return;
  }
  const to = document.createElement("bdi");
  to.textContent = recipientText(key, record(key), items.has(key));
  line.replaceChildren("To ", to);
  line.title = key;
}

function threadItem(key, entry) {
  const item = document.createElement("li");
  item.className = entry.way;
  item.dataset.id = entry.id;
  const body = document.createElement("bdi"); // a right-to-left body stays inside it
  body.className = "body";
  body.textContent = entry.body; // untrusted: never parsed as HTML
  if (entry.way === "in") {
    item.dataset.from = key;
    item.append(body);
  } else {
    const result = document.createElement("span");
    result.className = "result";
    item.append(body, " ", result);
    showResultIn(item, entry);
  }
  return item;
}

function showResultIn(item, { status, reason }) {
  item.dataset.status = status;
  if (reason === undefined) delete item.dataset.reason;
  else item.dataset.reason = reason;
  item.querySelector(".result").textContent = resultText({ status, reason });
}

/** Draws the selected conversation. */
function showThread() {
  const key = conversations.selected;
  thread.dataset.with = key ?? "";
  thread.replaceChildren(...(key ? conversations.thread(key).map((e) => threadItem(key, e)) : []));
  thread.scrollTop = thread.scrollHeight;
}

function appendToThread(key, entry) {
  if (key !== conversations.selected) return;
  thread.append(threadItem(key, entry));
  if (thread.children.length > conversations.thread(key).length) thread.firstElementChild.remove();
  thread.scrollTop = thread.scrollHeight;
}

function showMessage({ from, id, body }) {
  const before = conversations.selected;
  const entry = conversations.received(from, id, body);
  if (before !== conversations.selected) showSelection(before); // the first one selects
  else appendToThread(from, entry);
  if (from !== conversations.selected) {
    changed.add(from); // its unread count
    schedule();
  }
}

async function sendFromForm(event) {
  event.preventDefault();
  if (!lobby.client) return; // the identity is still loading
  const to = $("send-to").value.trim().toLowerCase();
  if (!HEX64.test(to)) {
    $("send-error").textContent = "Pick someone in the list, or paste a 64-hex key.";
    $("send-error").hidden = false;
    return;
  }
  $("send-error").hidden = true;
  select(to);
  const body = $("send-body").value;
  $("send-body").value = "";
  const id = crypto.randomUUID().replaceAll("-", "");
  const entry = conversations.sent(to, id, body);
  appendToThread(to, entry);
  let result;
  try {
    result = await lobby.client.send(to, body, { id });
  } catch (error) {
    result = { id, status: "failed", reason: error.message };
  }
  conversations.result(to, id, result.status, result.reason);
  const item = to === conversations.selected && thread.querySelector(`li[data-id="${id}"]`);
  if (item) showResultIn(item, entry);
}

usersList.addEventListener("click", (event) => {
  const item = event.target.closest("li[data-key]");
  if (!item) return;
  select(item.dataset.key);
  $("send-body").focus();
});
usersList.addEventListener("keydown", (event) => {
  const item = event.target.closest("li[data-key]");
  if (!item || (event.key !== "Enter" && event.key !== " ")) return;
  event.preventDefault();
  select(item.dataset.key);
});
$("send-to").addEventListener("input", () => {
  const key = $("send-to").value.trim().toLowerCase();
  if (HEX64.test(key)) select(key);
});

// -- Display name and status (version 2) ----------------------------------------------

const profileStore = () => `presence-lobby:profile:${identity.publicKey}`;

function storedProfile() {
  try {
    return parseProfile(localStorage.getItem(profileStore()));
  } catch {
    return null; // no storage here (a sandbox, a privacy setting)
  }
}

function formProfile() {
  return {
    name: $("profile-name").value.trim(),
    choice: $("profile-status").value,
    custom: $("profile-custom").value.trim(),
  };
}

function showProfile({ name, choice, custom }) {
  $("profile-name").value = name;
  $("profile-status").value = choice;
  $("profile-custom").value = custom;
  $("profile-custom").hidden = choice !== "custom";
}

function showProfileError(text) {
  $("profile-error").textContent = text ?? "";
  $("profile-error").hidden = !text;
}

function setProfile(event) {
  event.preventDefault();
  if (!lobby.client) return;
  const profile = formProfile();
  const problem = profileProblem(profile);
  showProfileError(problem);
  if (problem) return;
  try {
    lobby.client.setRecord(profileRecord(profile)); // or with the next auth, if not connected
  } catch (error) {
    showProfileError(error.message);
    return;
  }
  try {
    localStorage.setItem(profileStore(), JSON.stringify(profile));
  } catch {
    // kept for this page's life only
  }
}

/** Version 1 has no records: the form stays, disabled, and says why. */
function disableProfile(why = "This server speaks protocol version 1 only") {
  $("profile-fields").disabled = true;
  $("profile-note").textContent = `${why}: names and statuses need version 2.`;
  $("profile-note").hidden = false;
}

// -- Our key -----------------------------------------------------------------------

async function copyKey() {
  const button = $("copy-key");
  try {
    await navigator.clipboard.writeText(lobby.client.publicKey);
    button.textContent = "Copied";
  } catch {
    getSelection().selectAllChildren($("me")); // no clipboard here: let the user copy
    button.textContent = "Selected: copy it";
  }
  setTimeout(() => (button.textContent = "Copy key"), 2000);
}

// -- Start -------------------------------------------------------------------------

function socketUrl() {
  if (params.has("ws")) return params.get("ws");
  const url = new URL("/ws", location.href);
  url.protocol = location.protocol === "https:" ? "wss:" : "ws:";
  return url.href;
}

function identityOptions() {
  const key = params.get("key");
  if (key === "memory") return { storage: "memory" };
  return key ? { name: `presence-lobby:${key}` } : {};
}

/** A client of the version chosen, watched by the page, connecting. */
function useClient() {
  const options = { identity };
  if (lobby.version === 2) {
    const profile = storedProfile();
    Object.assign(options, { version: 2, record: profile ? profileRecord(profile) : undefined });
  }
  const client = new LobbyClient(socketUrl(), options);
  lobby.client = client;
  watchLobby(client);
  client.connect().catch((error) => {
    if (client !== lobby.client) return;
    if (wrongServer(error)) fallBackToVersion1(client, WRONG_SERVER_NOTE);
    else showFailure(error);
  });
}

const WRONG_SERVER_NOTE =
  "This server does not know the address this page was loaded from (its operator's " +
  "--public-url), so the page uses protocol version 1";

/**
 * A version 2 auth refused `wrong_server`: the server's --public-url does not list the
 * URL this page dialed (a reverse proxy its operator did not name). The page's key is
 * bound to its origin, which no relay can use, so version 1 is safe here; it says why.
 */
function wrongServer(error) {
  return lobby.version === 2 && error instanceof AuthFailed && error.reason === "wrong_server";
}

let probing = false;

/**
 * A v2 connection that failed before any frame (1006) may be a server without version
 * 2, which a browser cannot tell from one that is down (version_probe.js): ask, once
 * at a time, at the pace of the client's reconnects.
 */
async function probeVersion(client, { status, code }) {
  if (lobby.version !== 2 || status !== "reconnecting" || code !== 1006 || probing) return;
  probing = true;
  try {
    if (await lacksVersion2(socketUrl())) fallBackToVersion1(client);
  } finally {
    probing = false;
  }
}

/** The server has no version 2 (or refuses ours): version 1 from now on, for this page's life. */
function fallBackToVersion1(client, why = undefined) {
  if (client !== lobby.client || lobby.version === 1) return;
  lobby.version = 1;
  document.documentElement.dataset.protocol = "1";
  disableProfile(why);
  useClient();
  client.close(); // after the switch: its "closed" is no longer shown
}

async function start() {
  identity = await loadOrCreateIdentity(identityOptions());
  $("me").textContent = identity.publicKey;
  $("copy-key").disabled = false;
  $("copy-key").addEventListener("click", copyKey);
  $("reconnect").addEventListener("click", () => lobby.client.connect().catch(showFailure));
  showProfile(storedProfile() ?? { name: "", choice: "online", custom: "" });
  document.documentElement.dataset.protocol = "2";
  useClient();
}

$("send-form").addEventListener("submit", sendFromForm);
$("profile-form").addEventListener("submit", setProfile);
$("profile-status").addEventListener("change", () => {
  $("profile-custom").hidden = $("profile-status").value !== "custom";
});
start().catch(showFailure);
