"""scripts/procfs.py read on this very process (Linux), and scripts/fake_worker.py's
decoding of what a coordinator sends (no socket needed for that part)."""

from __future__ import annotations

import os
import socket
import sys

import pytest

from scripts import procfs
from scripts.fake_worker import encoded_size, messages_of
from shared import backbone as bb

linux = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads Linux's /proc")


@linux
def test_this_process_as_proc_describes_it() -> None:
    me = os.getpid()
    assert procfs.state(me) == "R"  # it is reading its own stat right now
    busy = procfs.cpu_seconds(me)
    assert busy > 0 and procfs.cpu_seconds(me, me) <= busy  # main thread within all
    assert procfs.machine_cpu_seconds() >= busy
    assert procfs.rss_bytes(me) > 1 << 20
    assert procfs.environ(me)["PATH"]  # as this process was started
    assert procfs.cmdline(me) == b"".join(os.fsencode(arg) + b"\0" for arg in sys.orig_argv)


@linux
def test_a_listening_port_is_found_and_a_missing_pid_has_no_state() -> None:
    port = procfs.free_port()
    with socket.socket() as server:
        server.bind(("127.0.0.1", port))
        assert port not in procfs.listening_ports(os.getpid())
        server.listen()
        assert port in procfs.listening_ports(os.getpid())
    with open("/proc/sys/kernel/pid_max") as f:
        pid_max = int(f.read())
    assert procfs.state(pid_max + 1) is None


@linux
def test_a_connection_is_mapped_to_its_process_and_sums_skip_missing_pids() -> None:
    me = os.getpid()
    with open("/proc/sys/kernel/pid_max") as f:
        gone = int(f.read()) + 1
    assert not procfs.alive(gone) and procfs.alive(me)
    assert procfs.total_rss_bytes([me, gone]) == procfs.total_rss_bytes([me]) > 0
    assert procfs.total_cpu_seconds([gone]) == 0.0
    with socket.create_server(("127.0.0.1", 0)) as server:
        client = socket.create_connection(server.getsockname())
        accepted, peer = server.accept()
        with client, accepted:
            peers = procfs.peers_by_process([me])
            assert peers[peer] == me  # the client's end, seen from the accepted socket
            assert peers[server.getsockname()] == me  # and the other way round
            assert procfs.peers_by_process([gone]) == {}


def test_a_frame_of_one_message_or_a_batch_is_decoded_and_sized() -> None:
    ack, kick = bb.AuthAck(7, "e", 3), bb.Kick(7)
    alone = bb.encode(ack)
    assert messages_of(alone) == [ack]
    assert encoded_size(alone, [ack], ack) == len(alone)
    batch = bb.pack([alone, bb.encode(kick)])
    assert messages_of(batch) == [ack, kick]
    assert encoded_size(batch, [ack, kick], kick) == len(bb.encode(kick))
    for refused in (b"\xff", bb.pack([alone, b"\x93\x01\xa3upd\x01"])):
        with pytest.raises(bb.BackboneDecodeError):
            messages_of(refused)
