/**
 * identity.js: a lobby identity, an Ed25519 key pair made and used through WebCrypto
 * (part of lobby.js, which re-exports it; see there).
 *
 * @module identity
 */

import { Ed25519Unsupported, toHex } from "./lobby_core.js";
import { signedPayloadV2 } from "./protocol_v2.js";

const ADVICE =
  "Use a current Chromium, Firefox or Safari, and serve the page over https " +
  "or from localhost (http://localhost or http://127.0.0.1).";

const DB_STORE = "identity";
const DB_RECORD = "keyPair";

/**
 * The identity kept under `name`, created on first use.
 *
 * In a browser with `storage: "indexeddb"` (the default) the key pair lives in the
 * IndexedDB database `name`, so a reload gets the same identity back; two pages
 * racing to create it end up with the same one. `storage: "memory"`, and any runtime
 * without IndexedDB (Node), make a fresh identity on every call. The private key is
 * never extractable.
 *
 * @param {{ name?: string, storage?: "indexeddb" | "memory" }} [options]
 * @returns {Promise<{ publicKey: string, privateKey: CryptoKey, keyPair: CryptoKeyPair,
 *   persisted: boolean }>}
 * @throws {Ed25519Unsupported}
 */
export async function loadOrCreateIdentity({ name = "presence-lobby", storage = "indexeddb" } = {}) {
  if (storage !== "indexeddb" && storage !== "memory") {
    throw new TypeError(`storage must be "indexeddb" or "memory", not ${JSON.stringify(storage)}`);
  }
  subtleCrypto(); // fail before touching storage when there is no WebCrypto at all
  if (storage === "memory" || typeof indexedDB === "undefined") {
    return { ...(await identityFromKeyPair(await generateKeyPair())), persisted: false };
  }
  const db = await idbResult(openDatabase(name));
  try {
    const keyPair = (await loadKeyPair(db)) ?? (await storeNewKeyPair(db));
    return { ...(await identityFromKeyPair(keyPair)), persisted: true };
  } finally {
    db.close();
  }
}

/**
 * The identity of a key pair of the app's own (an Ed25519 `CryptoKeyPair`).
 * @param {CryptoKeyPair} keyPair
 * @returns {Promise<{ publicKey: string, privateKey: CryptoKey, keyPair: CryptoKeyPair }>}
 */
export async function identityFromKeyPair(keyPair) {
  if (keyPair?.privateKey?.algorithm?.name !== "Ed25519") {
    throw new TypeError("identityFromKeyPair needs an Ed25519 CryptoKeyPair");
  }
  const raw = await subtleCrypto().exportKey("raw", keyPair.publicKey);
  return { publicKey: toHex(raw), privateKey: keyPair.privateKey, keyPair };
}
/** WebCrypto, looked up at each use; browsers leave it out of insecure contexts. */
function subtleCrypto() {
  const subtle = globalThis.crypto?.subtle;
  if (!subtle) {
    throw new Ed25519Unsupported(
      "WebCrypto is not available here (crypto.subtle is missing); browsers offer it " +
        "only to pages from a secure context. " + ADVICE,
    );
  }
  return subtle;
}

/** Ed25519 errors from WebCrypto say "not supported"; say what to do instead. */
function explainUnsupported(error) {
  if (error?.name !== "NotSupportedError") return error;
  return new Ed25519Unsupported(`This browser's WebCrypto has no Ed25519. ${ADVICE}`, {
    cause: error,
  });
}

async function generateKeyPair() {
  const subtle = subtleCrypto();
  try {
    return await subtle.generateKey({ name: "Ed25519" }, false, ["sign", "verify"]);
  } catch (error) {
    throw explainUnsupported(error);
  }
}

/**
 * Signs `payload` with an identity's private key (Ed25519, detached: 64 bytes).
 * @param {CryptoKey} privateKey
 * @param {Uint8Array} payload
 * @returns {Promise<ArrayBuffer>}
 * @throws {Ed25519Unsupported}
 */
export async function sign(privateKey, payload) {
  const subtle = subtleCrypto();
  try {
    return await subtle.sign({ name: "Ed25519" }, privateKey, payload);
  } catch (error) {
    throw explainUnsupported(error);
  }
}

/**
 * The `signature` of a protocol version 2 `auth`: the identity's signature of
 * `signedPayloadV2(serverId, nonceHex)`, as 128 lowercase hex.
 * @param {CryptoKey} privateKey
 * @param {string} serverId the server's identity (`serverIdentity(url)`)
 * @param {string} nonceHex the challenge's nonce
 * @returns {Promise<string>}
 * @throws {Ed25519Unsupported}
 */
export async function signV2(privateKey, serverId, nonceHex) {
  return toHex(await sign(privateKey, signedPayloadV2(serverId, nonceHex)));
}

function openDatabase(name) {
  const request = indexedDB.open(name, 1);
  request.onupgradeneeded = () => request.result.createObjectStore(DB_STORE);
  return request;
}

function loadKeyPair(db) {
  return idbResult(db.transaction(DB_STORE).objectStore(DB_STORE).get(DB_RECORD));
}

/** Stores a new pair unless another page stored one first, and returns the one kept. */
async function storeNewKeyPair(db) {
  const { publicKey, privateKey } = await generateKeyPair();
  const transaction = db.transaction(DB_STORE, "readwrite");
  transaction.objectStore(DB_STORE).add({ publicKey, privateKey }, DB_RECORD);
  try {
    await idbCommit(transaction);
    return { publicKey, privateKey };
  } catch (error) {
    if (error?.name !== "ConstraintError") throw error;
    return loadKeyPair(db);
  }
}

function idbResult(request) {
  return new Promise((resolve, reject) => {
    request.onsuccess = () => resolve(request.result);
    request.onerror = () => reject(request.error);
  });
}

function idbCommit(transaction) {
  return new Promise((resolve, reject) => {
    transaction.oncomplete = () => resolve();
    transaction.onabort = () => reject(transaction.error);
  });
}

