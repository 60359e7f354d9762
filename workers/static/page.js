// The lobby page's script (loaded by index.html as a module, so that the page's
// content security policy can forbid inline scripts). See index.html for what the page
// shows, its query parameters and what tests may rely on.
import { Ed25519Unsupported, LobbyClient, loadOrCreateIdentity } from "./lobby.js";

const MAX_LOG_ITEMS = 500;
const FLASH_MS = 1500;

const $ = (id) => document.getElementById(id);
const statusLine = $("status");
const usersList = $("users");
const params = new URLSearchParams(location.search);
const short = (key) => (key.length > 8 ? `${key.slice(0, 8)}…` : key);

let markReady;
let failReady;
const ready = new Promise((resolve, reject) => {
  markReady = resolve;
  failReady = reject;
});
ready.catch(() => {}); // shown on the page; tests that await it still see it fail
const lobby = { client: null, ready, applied: 0 };
const timings = { loadToOnlineMs: null, lastApplyMs: null };
window.lobby = lobby;
window.lobbyTimings = timings;

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
let framesPending = 0;
let scheduled = false;
const itemTemplate = document.createElement("li");
itemTemplate.append(document.createElement("button"));
itemTemplate.firstChild.type = "button";

function newItem(key, me) {
  const item = itemTemplate.cloneNode(true);
  item.dataset.key = key;
  item.title = key;
  item.firstChild.textContent = short(key);
  if (key === me) item.className = "me";
  items.set(key, item);
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
  const names = (keys, sign) => keys.map((key) => sign + short(key));
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
  touched.clear();
  flash(flashed);
  showActivity(joined, left);
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
  client.addEventListener("sync", ({ detail }) => {
    snapshotKeys = detail.online;
    touched.clear(); // the snapshot already holds these changes
    schedule();
  });
  client.addEventListener("join", ({ detail }) => touched.add(detail.key));
  client.addEventListener("leave", ({ detail }) => touched.add(detail.key));
  client.addEventListener("update", () => {
    framesPending += 1;
    schedule();
  });
}

usersList.addEventListener("click", (event) => {
  const item = event.target.closest("li[data-key]");
  if (!item) return;
  $("send-to").value = item.dataset.key;
  $("send-body").focus();
});

// -- Messages --------------------------------------------------------------------

function appendLogItem(list, item) {
  list.append(item);
  if (list.children.length > MAX_LOG_ITEMS) list.firstElementChild.remove();
  list.scrollTop = list.scrollHeight;
}

function keySpan(key) {
  const span = document.createElement("span");
  span.className = "key";
  span.title = key;
  span.textContent = short(key);
  return span;
}

function showResult(to, { id, status, reason }) {
  const item = document.createElement("li");
  item.dataset.id = id;
  item.dataset.status = status;
  if (reason !== undefined) item.dataset.reason = reason;
  item.append("to ", keySpan(to), `: ${status}${reason === undefined ? "" : ` (${reason})`}`);
  appendLogItem($("results"), item);
}

function showMessage({ from, id, body }) {
  const item = document.createElement("li");
  item.dataset.from = from;
  item.dataset.id = id;
  const text = document.createElement("span");
  text.className = "body";
  text.textContent = body; // untrusted: never parsed as HTML
  item.append(keySpan(from), ": ", text);
  appendLogItem($("messages"), item);
}

async function sendFromForm(event) {
  event.preventDefault();
  if (!lobby.client) return; // the identity is still loading
  const to = $("send-to").value.trim().toLowerCase();
  const body = $("send-body").value;
  $("send-body").value = "";
  const id = crypto.randomUUID().replaceAll("-", "");
  try {
    showResult(to, await lobby.client.send(to, body, { id }));
  } catch (error) {
    showResult(to, { id, status: "failed", reason: error.message });
  }
}

$("messages").addEventListener("click", (event) => {
  const item = event.target.closest("li[data-from]");
  if (item) $("send-to").value = item.dataset.from;
});

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

async function start() {
  const identity = await loadOrCreateIdentity(identityOptions());
  const client = new LobbyClient(socketUrl(), { identity });
  lobby.client = client;
  $("me").textContent = client.publicKey;
  $("copy-key").disabled = false;
  $("copy-key").addEventListener("click", copyKey);
  $("reconnect").addEventListener("click", () => client.connect().catch(showFailure));
  client.addEventListener("status", ({ detail }) => showStatus(detail));
  client.addEventListener("message", ({ detail }) => showMessage(detail));
  watchLobby(client);
  await client.connect();
}

$("send-form").addEventListener("submit", sendFromForm);
start().catch(showFailure);
