#!/usr/bin/env python3
"""A webhook receiver for presence-lobby: verifies each delivery, keeps who is online.

    python3 scripts/webhook_receiver.py --port 9000 --secret-file webhook-secret
        [--lobby-url http://127.0.0.1:8766/v1/lobby --api-token-file api-token]
        [--state state.json] [--host 127.0.0.1] [--tolerance 300] [--fail-first N]

An example to copy from (the standard library alone; docs/API.md, "Webhooks"). For each
POST it:

1. checks the ``Presence-Signature`` header: ``t=T,v1=HEX``, HEX the HMAC-SHA256 with
   the shared secret of ``T`` + ``"."`` + the body as received, compared in constant
   time, and ``T`` within ``--tolerance`` seconds of now (a replayed old delivery is
   refused); anything else is answered 401 and not read further;
2. applies the delivery's events to its view (public key -> record) in order: an event
   whose ``seq`` is not above the view's is one it already has (a retry whose answer
   was lost) and is skipped; a new epoch whose first delivery starts at ``seq`` 1
   (``previous`` 0) starts again from an empty lobby;
3. repairs when it cannot know the lobby from the events: the delivery reports lost
   events, a ``seq`` skips a number, or a new epoch does not start at its beginning.
   It reads ``GET /v1/lobby`` (``--lobby-url``), whose ``lastEventId`` says which
   event the answer includes, takes it as its view, and applies the events after it.
   If that answer is older than the delivery's events (another worker's replica a
   moment behind), it answers 503 and the sender retries the same delivery.

Answers 2xx only once the delivery is applied (and saved in ``--state``, if given, so
a restarted receiver continues where it stopped). Prints one JSON line per request:
``{"delivery", "verdict", "epoch", "seq", "applied", "online"}``, ``verdict`` one of
``applied``, ``reset``, ``repaired``, ``duplicate``, ``bad_signature``, ``bad_body``,
``behind``, ``failed`` (the repair could not read the lobby), ``failing`` (one of the
first ``--fail-first`` requests, answered 500 to show the sender retrying).
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import hmac
import json
import os
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, HTTPServer
from typing import Any

SIGNATURE_HEADER = "Presence-Signature"
DELIVERY_HEADER = "Presence-Delivery"
MAX_BODY = 64 * 1024 * 1024

Lobby = Callable[[], dict[str, Any]]
"""Reads ``GET /v1/lobby``: ``{"lastEventId": "EPOCH:SEQ", "users": [...]}``."""


def verify(secret: bytes, header: str, body: bytes, now: float, tolerance: float) -> bool:
    """Whether ``header`` (``t=T,v1=HEX[,v1=HEX...]``) signs ``body`` with ``secret``
    at a time ``T`` within ``tolerance`` seconds of ``now``."""
    timestamp, signatures = None, []
    for part in header.split(","):
        name, _, value = part.strip().partition("=")
        if name == "t" and value.isdigit():
            timestamp = value
        elif name == "v1":
            signatures.append(value)
    if timestamp is None or abs(now - int(timestamp)) > tolerance:
        return False
    signed = timestamp.encode() + b"." + body
    expected = hmac.new(secret, signed, hashlib.sha256).hexdigest()
    # Every candidate is compared (a sender rotating its secret may sign with two).
    return any([hmac.compare_digest(expected, given) for given in signatures])


class BehindError(Exception):
    """The lobby read for a repair is older than the delivery: try again later."""


class Follower:
    """Who is online, as of event ``seq`` of ``epoch``, kept from deliveries."""

    def __init__(self, state: dict[str, Any] | None = None) -> None:
        state = state or {}
        self.epoch: str | None = state.get("epoch")
        self.seq: int = state.get("seq", 0)
        self.users: dict[str, dict[str, Any]] = state.get("users", {})

    def state(self) -> dict[str, Any]:
        return {"epoch": self.epoch, "seq": self.seq, "users": self.users}

    def receive(self, delivery: dict[str, Any], lobby: Lobby) -> tuple[str, list[int]]:
        """Apply ``delivery`` (its decoded body); returns the verdict and the ``seq`` of
        each event applied. Raises :class:`BehindError` (answer 503: it is retried)."""
        epoch, events = delivery["epoch"], delivery["events"]
        verdict = "applied"
        from_start = delivery["previous"] == 0 and delivery["first"] == 1
        if delivery["lost"] is not None or (epoch != self.epoch and not from_start):
            self.repair(lobby, epoch, delivery["first"])
            verdict = "repaired"
        elif epoch != self.epoch:  # a new coordinator: its lobby began empty at seq 0
            self.epoch, self.seq, self.users = epoch, 0, {}
            verdict = "reset"
        applied = []
        for event in events:
            if event["epoch"] != self.epoch or event["seq"] <= self.seq:
                continue  # had it already (a retried delivery), or older than the repair
            if event["seq"] != self.seq + 1:  # missed one: can only be repaired
                self.repair(lobby, epoch, event["seq"])
                verdict = "repaired"
                if event["epoch"] != self.epoch or event["seq"] <= self.seq:
                    continue
            for gone in event["left"]:
                self.users.pop(gone["publicKey"], None)
            for user in event["joined"] + event["updated"]:
                self.users[user["publicKey"]] = {"status": user["status"], "data": user["data"]}
            self.seq = event["seq"]
            applied.append(self.seq)
        if not applied and verdict == "applied":
            verdict = "duplicate"
        return verdict, applied

    def repair(self, lobby: Lobby, epoch: str, first: int | None) -> None:
        """Take the lobby as the view; it must include the event before ``first`` of
        ``epoch`` (a delivery that only reports a loss has no ``first``)."""
        answer = lobby()
        at_epoch, _, at_seq = answer["lastEventId"].rpartition(":")
        if at_epoch == epoch and first is not None and int(at_seq) < first - 1:
            raise BehindError(f"the lobby is at {answer['lastEventId']}, before {first - 1}")
        self.epoch, self.seq = at_epoch, int(at_seq)
        self.users = {
            user["publicKey"]: {"status": user["status"], "data": user["data"]}
            for user in answer["users"]
        }


def read_lobby(url: str, token: str) -> Lobby:
    def read() -> dict[str, Any]:
        request = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"})
        with urllib.request.urlopen(request, timeout=5) as answer:
            return json.loads(answer.read())  # type: ignore[no-any-return]

    return read


def no_lobby() -> dict[str, Any]:
    raise OSError("no --lobby-url to repair from")


class Receiver(HTTPServer):
    def __init__(
        self,
        address: tuple[str, int],
        secret: bytes,
        *,
        lobby: Lobby = no_lobby,
        state_file: str | None = None,
        tolerance: float = 300.0,
        fail_first: int = 0,
    ) -> None:
        super().__init__(address, Handler)
        self.failures_left = fail_first
        self.secret = secret
        self.lobby = lobby
        self.state_file = state_file
        self.tolerance = tolerance
        state = None
        if state_file is not None and os.path.exists(state_file):
            with open(state_file) as file:
                state = json.load(file)
        self.follower = Follower(state)

    def save(self) -> None:
        if self.state_file is not None:
            temporary = self.state_file + ".new"
            with open(temporary, "w") as file:
                json.dump(self.follower.state(), file)
            os.replace(temporary, self.state_file)  # whole or not at all


class Handler(BaseHTTPRequestHandler):
    server: Receiver

    def do_POST(self) -> None:
        report: dict[str, Any] = {"delivery": self.headers.get(DELIVERY_HEADER)}
        if self.server.failures_left > 0:
            self.server.failures_left -= 1
            return self.finish_with(HTTPStatus.INTERNAL_SERVER_ERROR, report, "failing")
        try:
            length = int(self.headers.get("Content-Length", ""))
        except ValueError:
            length = -1
        if not 0 <= length <= MAX_BODY:
            return self.finish_with(HTTPStatus.BAD_REQUEST, report, "bad_body")
        body = self.rfile.read(length)
        header = self.headers.get(SIGNATURE_HEADER, "")
        if not verify(self.server.secret, header, body, time.time(), self.server.tolerance):
            return self.finish_with(HTTPStatus.UNAUTHORIZED, report, "bad_signature")
        try:
            delivery = json.loads(body)
        except ValueError:
            return self.finish_with(HTTPStatus.BAD_REQUEST, report, "bad_body")
        try:
            verdict, applied = self.server.follower.receive(delivery, self.server.lobby)
        except BehindError:
            return self.finish_with(HTTPStatus.SERVICE_UNAVAILABLE, report, "behind")
        except (OSError, ValueError, KeyError) as exc:  # the lobby could not be read
            report["error"] = str(exc)
            return self.finish_with(HTTPStatus.SERVICE_UNAVAILABLE, report, "failed")
        self.server.save()
        report["applied"] = applied
        self.finish_with(HTTPStatus.OK, report, verdict)

    def finish_with(self, status: HTTPStatus, report: dict[str, Any], verdict: str) -> None:
        follower = self.server.follower
        report.update(verdict=verdict, epoch=follower.epoch, seq=follower.seq)
        report["online"] = len(follower.users)
        print(json.dumps(report), flush=True)
        self.send_response(status)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:
        pass  # one JSON line per request is printed instead


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else "")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--secret-file", required=True, help="the coordinator's secret")
    parser.add_argument("--lobby-url", help="GET /v1/lobby of the backend API, to repair")
    parser.add_argument("--api-token-file", help="the backend API's token")
    parser.add_argument("--state", help="file the view is saved in after each delivery")
    parser.add_argument("--tolerance", type=float, default=300.0, help="seconds (300)")
    parser.add_argument(
        "--fail-first", type=int, default=0, help="answer 500 to the first N requests (a demo)"
    )
    args = parser.parse_args(argv)
    if (args.lobby_url is None) != (args.api_token_file is None):
        parser.error("--lobby-url and --api-token-file go together")
    try:
        with open(args.secret_file, "rb") as file:
            secret = file.read().strip()
        lobby = no_lobby
        if args.lobby_url is not None:
            with open(args.api_token_file) as file:
                lobby = read_lobby(args.lobby_url, file.read().strip())
        server = Receiver(
            (args.host, args.port),
            secret,
            lobby=lobby,
            state_file=args.state,
            tolerance=args.tolerance,
            fail_first=args.fail_first,
        )
    except (OSError, ValueError) as exc:
        print(f"webhook_receiver: {exc}", file=sys.stderr)
        return 2
    print(f"listening on http://{args.host}:{args.port}/", flush=True)
    with contextlib.suppress(KeyboardInterrupt):
        server.serve_forever()
    return 0


if __name__ == "__main__":
    sys.exit(main())
