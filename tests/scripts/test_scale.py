"""The scale scenario end to end on a small cluster it starts: contacts and counts,
presence changes, a worker killed and its users back whole; and its refusal, before
anything starts, when a limit stands in the way."""

from __future__ import annotations

import asyncio
import json
import re
from pathlib import Path
from types import SimpleNamespace

import pytest

from scripts.loadtest.__main__ import main
from scripts.loadtest.scaleops import ScaleOps

SMALL = ["--contacts", "5", "--rate", "40", "--duration", "2", "--count-fraction", "0.2"]


@pytest.mark.process
def test_scale_connects_changes_kills_and_every_view_ends_right(tmp_path: Path) -> None:
    out = tmp_path / "scale.json"
    log = tmp_path / "server.log"
    argv = ["--start", "cluster", "--protocol", "2", "--quiet", "--json", str(out)]
    argv += ["--server-log", str(log)]
    code = main([*argv, "--settle-timeout", "10", "scale", "40", *SMALL])
    result = json.loads(out.read_text())
    assert code == 0, result["failures"]
    m, params = result["metrics"], result["params"]
    assert "--memory-budget=" in params["worker_args"] and params["kill"] is True
    # Two rounds of 40 users at 40 a second: leaves, then rejoins on the next turn.
    assert m["changes_status"] > 0 and m["changes_leave"] > 0 and m["changes_rejoin"] > 0
    assert m["status_to_seen_samples"] > 0 and m["presence_to_seen_samples"] > 0
    assert m["frames_per_change"] > 0 and m["memory_per_connection_kib"] > 0
    assert 0 < m["kill_lost"] == m["kill_back"]
    assert m["kill_asked_resume"] == m["kill_lost"] - m["kill_counters"] > 0
    assert m["kill_resumed"] > 0
    assert m["kill_whole_s"] is not None
    assert m["kill_bytes_by_snapshots"] > m["kill_bytes"] > 0
    # --server-log: the whole output, from the start to after the kill and the stop.
    output = log.read_text()
    assert "coordinator" in output and "stopped" in output
    assert re.search(r"started w\d+-2\b", output), "the restarted worker is not in the log"


def test_scale_refuses_before_starting_when_a_limit_is_short(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "scale.json"
    argv = ["--start", "cluster", "--protocol", "2", "--json", str(out)]
    one = ["--source-addresses", "127.0.0.2"]  # about 14,000 users' ports
    assert main([*argv, *one, "scale", "100000", "--rate", "1000"]) == 2
    err = capsys.readouterr().err
    assert "raise these limits first (nothing was started)" in err
    assert "--source-addresses" in err and "ip_local_port_range" in err
    result = json.loads(out.read_text())
    assert not result["ok"] and "local ports" in result["skipped"]
    assert result["metrics"] == {}


def test_a_wrong_view_names_the_users_the_lobby_and_the_truth_disagree_on() -> None:
    """The diagnosis a failed check after a kill takes: who is online in the truth and
    not in the lobby, who is in the lobby only, each with its client's state."""
    clients = {
        i: SimpleNamespace(closed=i == 2, close_code=1011 if i == 2 else None,
                           close_reason="", status="online", reconnects=0,
                           local_address=("127.0.0.2", 40000 + i))
        for i in range(4)
    }  # fmt: skip
    agent = SimpleNamespace(clients=clients, pub=lambda i: f"{i:064x}")
    lobby = [agent.pub(0), agent.pub(3)]  # 1 is missing; 3 should be gone
    found = asyncio.run(ScaleOps.op_scale_disagree(agent, lobby, [0, 1, 2]))  # type: ignore[arg-type]
    assert len(found) == 3
    assert found[0].startswith("1 (") and "online in the truth, not in the lobby" in found[0]
    assert found[1].startswith("2 (") and "closed 1011" in found[1]
    assert found[2].startswith("3 (") and "in the lobby only" in found[2]
    assert "127.0.0.2" in found[0]
