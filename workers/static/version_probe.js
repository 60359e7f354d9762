/**
 * version_probe.js: whether a server is up but has no protocol version 2.
 *
 * A server without version 2 selects no subprotocol when a client offers `presence.v2`.
 * A browser cannot see that: it fails the WebSocket handshake (a client that offered
 * subprotocols must get one back), and reports close 1006, as for a server that is down
 * or refuses the upgrade (HTTP 503 at capacity). So a v2 client in a browser just
 * reconnects. The page asks this module after such a failure: a plain WebSocket
 * opens, and while it is open (the server is up at that moment) one that offers
 * `presence.v2` fails: then the server has no version 2. Anything else (the plain one
 * fails too, or either takes over `timeoutMs`) proves nothing, and the v2 client carries
 * on. Both sockets are closed (1000) before the answer; neither authenticates.
 *
 * @module version_probe
 */

import { SUBPROTOCOL } from "./protocol_v2.js";

/** How long each socket of the probe may take to open or fail (ms). */
export const PROBE_TIMEOUT_MS = 5000;

/** "open" (with the socket), "failed" or "timeout". */
function attempt(open, { setTimeout, clearTimeout, timeoutMs }) {
  return new Promise((resolve) => {
    let ws;
    let timer;
    const settle = (outcome) => {
      clearTimeout(timer);
      ws.onopen = ws.onclose = ws.onerror = null;
      if (outcome !== "open") ws.close(1000);
      resolve({ outcome, ws });
    };
    try {
      ws = open();
    } catch {
      resolve({ outcome: "failed", ws: null }); // a URL this page may not open
      return;
    }
    ws.onopen = () => settle("open");
    ws.onerror = () => {}; // the close event that follows says it
    ws.onclose = () => settle("failed");
    timer = setTimeout(() => settle("timeout"), timeoutMs);
  });
}

/**
 * Resolves true when the server at `url` is up and refuses `presence.v2` (see the module
 * comment), false otherwise. Never rejects.
 */
export async function lacksVersion2(
  url,
  {
    WebSocket = globalThis.WebSocket,
    setTimeout = globalThis.setTimeout,
    clearTimeout = globalThis.clearTimeout,
    timeoutMs = PROBE_TIMEOUT_MS,
  } = {},
) {
  const timers = {
    setTimeout: (callback, ms) => setTimeout(callback, ms),
    clearTimeout: (timer) => clearTimeout(timer),
    timeoutMs,
  };
  const plain = await attempt(() => new WebSocket(url), timers);
  if (plain.outcome !== "open") return false;
  try {
    const v2 = await attempt(() => new WebSocket(url, [SUBPROTOCOL]), timers);
    if (v2.outcome === "open") v2.ws.close(1000);
    return v2.outcome === "failed";
  } finally {
    plain.ws.close(1000);
  }
}
