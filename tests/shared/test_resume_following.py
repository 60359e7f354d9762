"""A resumed view is never of another choice than the one its ``auth`` states, whatever
happens to the scope requests in flight (docs/PROTOCOL.md, "Resume").

The client is the bundled one's pure part (:class:`shared.session_v2.SessionV2`, with
:class:`shared.v2.following.Following`); the server is a model written from the
contract: it applies scope requests in order or refuses them with an ``error`` carrying
``applied``, sends snapshots nobody asked for (a resync, a new epoch), defers the
snapshot answering a request (a slow consumer's), routes updates of the lobby to the
connection's choice, and resumes from a ring that holds every state of its epoch.
Hypothesis draws the interleaving: requests, refusals, unsolicited snapshots, updates,
deliveries, and drops at any point."""

from __future__ import annotations

import itertools
import json
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from nacl.signing import SigningKey

from shared import v2
from shared.protocol import GetLobby
from shared.session_v2 import SessionV2
from shared.v2 import Follow, Scope
from shared.v2.client import FollowFrame, Unwatch, Watch

KEY = SigningKey(bytes(range(32)))
ME = KEY.verify_key.encode().hex()
URL = "ws://127.0.0.1:8765/ws"
KEYS = [f"{n:064x}" for n in range(1, 6)]
BOUND = 3  # the model's watchlist bound (the client checks 1,000: the server refuses)
NONCE = "ab" * 32
Choice = tuple[Scope, frozenset[str]]


def choice(follow: Follow | None) -> Choice:
    follow = follow or Follow()
    return follow.scope, frozenset(follow.keys)


@dataclass
class Lobby:
    """Who is online, numbered; ``states`` holds every state of the epoch (the ring)."""

    epoch: str = "e1"
    seq: int = 0
    online: frozenset[str] = frozenset({ME, KEYS[0], KEYS[2]})
    states: dict[int, frozenset[str]] = field(default_factory=dict)
    epochs: itertools.count[int] = field(default_factory=lambda: itertools.count(2))

    def __post_init__(self) -> None:
        self.states[self.seq] = self.online

    def toggle(self, key: str) -> None:
        self.online = self.online ^ {key}
        self.seq += 1
        self.states[self.seq] = self.online

    def new_epoch(self) -> None:
        self.epoch, self.seq = f"e{next(self.epochs)}", self.seq // 2
        self.states = {self.seq: self.online}


@dataclass
class Conn:
    """The server's side of one connection."""

    lobby: Lobby
    choice: Choice
    applied: int = 0
    sent: frozenset[str] = frozenset()  # the online keys the client was last sent
    prev: int = 0
    lagging: bool = False
    inbox: deque[str] = field(default_factory=deque)
    outbox: deque[tuple[str | bytes, Choice | None]] = field(default_factory=deque)

    def visible(self, online: frozenset[str]) -> frozenset[str]:
        scope, keys = self.choice
        return online if scope is Scope.LOBBY else online & keys

    def snapshot(self) -> None:
        lobby, self.lagging = self.lobby, False
        self.prev = lobby.seq
        if self.choice[0] is Scope.COUNT:
            frame: str | bytes = v2.count(lobby.epoch, lobby.seq, len(lobby.online), self.applied)
        else:
            self.sent = self.visible(lobby.online)
            entries = [(key, v2.Record()) for key in sorted(self.sent)]
            frame = v2.encode_snapshot(
                lobby.epoch, lobby.seq, self.choice[0], entries, self.applied
            )
        self.outbox.append((frame, self.choice))

    def changed(self) -> None:
        """The lobby changed: an update of the choice (or a count), if it shows."""
        if self.lagging:
            return
        if self.choice[0] is Scope.COUNT:
            self.snapshot()
            return
        now = self.visible(self.lobby.online)
        if now == self.sent and self.choice[0] is Scope.WATCH:
            return
        self.update(now)

    def update(self, now: frozenset[str]) -> None:
        joined = [(key, v2.Record()) for key in sorted(now - self.sent)]
        frame = v2.encode_update(self.lobby.seq, self.prev, joined, [], sorted(self.sent - now))
        self.sent, self.prev = now, self.lobby.seq
        self.outbox.append((frame, None))

    def serve(self, refuse: bool, slow: bool) -> None:
        """Handle the next frame the client sent: ``refuse`` a scope request (memory
        pressure, or the message rate), or defer its snapshot (``slow``)."""
        parsed = v2.parse_client_frame_v2(self.inbox.popleft())
        scope, keys = self.choice
        if isinstance(parsed, FollowFrame | Watch | Unwatch):
            new: Choice | None = None
            if refuse:
                code = v2.ErrorCodeV2.RATE_LIMITED
            elif isinstance(parsed, FollowFrame):
                new = choice(parsed.follow)
            elif scope is not Scope.WATCH:
                code = v2.ErrorCodeV2.NOT_WATCHING
            elif isinstance(parsed, Watch):
                new = (scope, keys | set(parsed.keys))
            else:
                new = (scope, keys - set(parsed.keys))
            if new is not None and len(new[1]) > BOUND:
                new, code = None, v2.ErrorCodeV2.WATCHLIST_FULL
            if new is None:
                self.outbox.append((v2.error_v2(code, "refused", self.applied), None))
                return
            self.choice, self.applied = new, self.applied + 1
        elif not isinstance(parsed, GetLobby):
            return  # (a set_record: not drawn)
        if slow or self.lagging:
            self.lagging = True
        else:
            self.snapshot()


@dataclass
class World:
    lobby: Lobby = field(default_factory=Lobby)
    session: SessionV2 | None = None
    conn: Conn | None = None
    view_choice: Choice | None = None  # what the client's view is truly of
    resumes: int = 0

    def connect(self, session: SessionV2, first: bool = True) -> None:
        """A new connection: the handshake, then ``auth_ok`` and the first view."""
        lobby = self.lobby
        session.receive(v2.challenge_v2(NONCE))
        auth = json.loads(session.data_to_send()[0])
        stated = choice(v2.parse_client_frame_v2(json.dumps(auth)).follow)  # type: ignore[union-attr]
        if "resume" in auth:  # the contract: the view is of the choice stated
            assert stated == self.view_choice, (stated, self.view_choice)
        conn = Conn(lobby, stated)
        resume = auth.get("resume")
        resumed = (
            resume is not None
            and resume["epoch"] == lobby.epoch
            and resume["seq"] in lobby.states
            and stated[0] is not Scope.COUNT
        )
        session.receive(v2.auth_ok_v2(ME, lobby.epoch, lobby.seq, resumed))
        if resumed:
            self.resumes += 1
            conn.sent, conn.prev = conn.visible(lobby.states[resume["seq"]]), resume["seq"]
            conn.update(conn.visible(lobby.online))
        else:
            conn.snapshot()
        self.session, self.conn = session, conn
        self.send()  # what the session writes after auth_ok
        if first:
            self.deliver()  # the first view

    def send(self) -> None:
        assert self.session is not None and self.conn is not None
        self.conn.inbox.extend(self.session.data_to_send())

    def deliver(self) -> None:
        assert self.session is not None and self.conn is not None
        frame, shown = self.conn.outbox.popleft()
        self.session.receive(frame)
        if shown is not None:
            self.view_choice = shown
        self.send()

    def drop(self, first: bool = True) -> None:
        """The connection drops (what is in flight is lost); the next one resumes.
        Without ``first``, it drops too before its first view."""
        assert self.session is not None
        follow, resume, resend = self.session.next_connection()
        view = self.session.view if resume is not None else None
        session = SessionV2(KEY, URL, follow=follow, resume=resume, view=view, resend=resend)
        self.connect(session, first)
        if not first:
            self.drop()

    def settle(self) -> None:
        """Everything in flight is answered, nothing refused or deferred."""
        conn = self.conn
        assert conn is not None
        while conn.inbox or conn.outbox or conn.lagging:
            if conn.inbox:
                conn.serve(refuse=False, slow=False)
            elif conn.outbox:
                self.deliver()
            else:
                conn.snapshot()


def ask(session: SessionV2, what: str, keys: list[str]) -> None:
    try:
        if what == "follow_watch":
            session.follow_watch(keys)
        elif what in ("watch", "unwatch"):
            getattr(session, what)(keys)
        else:
            getattr(session, what)()
    except ValueError:
        pass  # (watch or unwatch while not following a watchlist: refused at once)


keys = st.lists(st.sampled_from(KEYS), min_size=1, max_size=3, unique=True)
requests = st.sampled_from(
    ["follow_lobby", "follow_count", "follow_watch", "watch", "unwatch", "get_lobby"]
)
actions = st.one_of(
    st.tuples(st.just("ask"), requests, keys),
    st.tuples(st.just("serve"), st.booleans(), st.booleans()),
    st.tuples(st.just("deliver")),
    st.tuples(st.just("deliver")),
    st.tuples(st.just("change"), st.sampled_from(KEYS)),
    st.tuples(st.just("resync")),
    st.tuples(st.just("epoch")),
    st.tuples(st.just("sweep")),
    st.tuples(st.just("drop"), st.booleans()),
)


def fresh_view(world: World) -> tuple[Scope, frozenset[str] | int]:
    conn = world.conn
    assert conn is not None
    if conn.choice[0] is Scope.COUNT:
        return Scope.COUNT, len(world.lobby.online)
    return conn.choice[0], conn.visible(world.lobby.online)


def client_view(world: World) -> tuple[Scope, frozenset[str] | int]:
    view = world.session.view  # type: ignore[union-attr]
    return view.scope, view.count if view.scope is Scope.COUNT else frozenset(view.records)


@settings(max_examples=300, deadline=None)
@given(
    st.sampled_from([Follow(), Follow(Scope.WATCH, (KEYS[0],)), Follow(Scope.COUNT)]),
    st.lists(actions, max_size=40),
)
def test_a_resume_states_the_choice_of_its_view_and_ends_as_a_fresh_snapshot(
    start: Follow, steps: list[tuple[Any, ...]]
) -> None:
    world = World()
    world.connect(SessionV2(KEY, URL, follow=start))
    for step in steps:
        session, conn = world.session, world.conn
        assert session is not None and conn is not None
        kind = step[0]
        if kind == "ask":
            ask(session, step[1], step[2])
            world.send()
        elif kind == "serve" and conn.inbox:
            conn.serve(refuse=step[1], slow=step[2])
        elif kind == "deliver" and conn.outbox:
            world.deliver()
        elif kind == "change":
            world.lobby.toggle(step[1])
            conn.changed()
        elif kind == "resync":
            conn.lagging = True
        elif kind == "epoch":
            world.lobby.new_epoch()
            conn.snapshot()
        elif kind == "sweep" and conn.lagging:
            conn.snapshot()
        elif kind == "drop":
            world.drop(step[1])  # asserts the resume's choice is its view's
    world.settle()
    # Once everything is answered, the client and the server agree on the choice, and
    # the view is the fresh snapshot of it, whatever was resumed on the way.
    session, conn = world.session, world.conn
    assert session is not None and conn is not None
    assert choice(session.follow) == conn.choice
    assert choice(session.following.view) == conn.choice
    assert client_view(world) == fresh_view(world)
    world.drop()
    world.settle()
    assert client_view(world) == fresh_view(world)
    assert world.resumes > 0 or conn.choice[0] is Scope.COUNT
