"""The worker's public identities in protocol version 2 (workers/identities.py)."""

from __future__ import annotations

import pytest

from shared.options import SettingsError, parse_args
from workers.identities import identities, machine_names
from workers.settings import ProtocolV2, WorkerSettings

MACHINE = ["vm", "vm.example", "192.0.2.2", "fd00::2", "127.0.0.1", "::1", "localhost"]


def test_public_urls_are_canonicalised_and_replace_the_defaults() -> None:
    got = identities(["wss://Lobby.Example/ws", "ws://[0:0::1]:80/ws"], "127.0.0.1", 8765, False)
    assert got == {"wss://lobby.example:443/ws", "ws://[::1]:80/ws"}


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost", "::1"])
def test_a_loopback_host_is_every_local_name_of_it(host: str) -> None:
    assert identities([], host, 8765, False) == {
        "ws://127.0.0.1:8765/ws",
        "ws://localhost:8765/ws",
        "ws://[::1]:8765/ws",
    }


def test_tls_makes_them_wss() -> None:
    assert "wss://localhost:9000/ws" in identities([], "localhost", 9000, True)


@pytest.mark.parametrize("host", ["0.0.0.0", "::"])
def test_a_wildcard_host_is_every_name_and_address_of_the_machine(host: str) -> None:
    got = identities([], host, 8765, False, MACHINE)
    assert got == {
        "ws://vm:8765/ws",
        "ws://vm.example:8765/ws",
        "ws://192.0.2.2:8765/ws",
        "ws://[fd00::2]:8765/ws",
        "ws://127.0.0.1:8765/ws",
        "ws://[::1]:8765/ws",
        "ws://localhost:8765/ws",
    }


def test_another_host_is_itself() -> None:
    assert identities([], "192.0.2.7", 8765, False, MACHINE) == {"ws://192.0.2.7:8765/ws"}
    assert identities([], "Lobby.Example", 443, True) == {"wss://lobby.example:443/ws"}


def test_a_name_no_url_can_hold_is_left_out() -> None:
    assert identities([], "0.0.0.0", 1, False, ["ok", "bad name"]) == {"ws://ok:1/ws"}


def test_this_machine_has_names() -> None:
    names = machine_names()
    assert names and all(names)
    assert not any(name.startswith("fe80") for name in names)


@pytest.mark.parametrize("url", ["http://lobby.example/ws", "ws://", "wss://a:99999/ws"])
def test_a_bad_public_url_is_refused_at_start_naming_it(url: str) -> None:
    with pytest.raises(SettingsError, match="--public-url") as caught:
        ProtocolV2(public_url=("ws://fine/ws", url))
    assert url in str(caught.value)


def test_public_url_is_repeatable_and_each_a_comma_list(monkeypatch: pytest.MonkeyPatch) -> None:
    def parsed(*argv: str) -> tuple[str, ...]:
        return parse_args(WorkerSettings, list(argv), prog="w", description="")[0].v2.public_url

    assert parsed() == ()
    assert parsed("--public-url", "ws://a/ws", "--public-url", "ws://b/ws, ws://c/ws") == (
        "ws://a/ws",
        "ws://b/ws",
        "ws://c/ws",
    )
    monkeypatch.setenv("PRESENCE_PUBLIC_URL", "ws://env/ws,ws://env2/ws")
    assert parsed() == ("ws://env/ws", "ws://env2/ws")
    assert parsed("--public-url", "ws://b/ws") == ("ws://b/ws",)  # the command line wins
