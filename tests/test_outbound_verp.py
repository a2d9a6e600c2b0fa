"""VERP return paths in delivery, in real processes: each recipient of a message
reaches the sink in its own transaction, from a VERP address on the MTA server's
hostname (then on the Pool's own bounce domain once it names one) that decodes
to the message id and the recipient's index. `poolmta verp rotate` while mail
is in flight: new mail is signed with the new key within seconds, and the
addresses given out before still decode."""

from __future__ import annotations

import subprocess
import sys
from dataclasses import replace

import pytest

from dataplane.return_path import keyring_path
from dataplane.verp import VerpCodec, VerpError, VerpReason
from dataplane.verp_keyring import VerpKeyring
from tests.dataplane_support import HOSTNAME, ROOT, make_bridge, make_pool, make_snapshot, message, publish, send_all
from tests.support import wait_until

SERVER = 1
SECRET = "s3cret"
IP = "127.0.0.2"


def _codec(plane) -> VerpCodec:
    """What the inbound listener decodes with: the data directory's key file, read now."""
    return VerpCodec(VerpKeyring.load_or_create(keyring_path(plane.data_dir)))


def _return_paths(sink, message_id_of: dict) -> dict[str, str]:
    """recipient -> the MAIL FROM it reached the sink with, for the messages named."""
    return {entry["rcpts"][0]: entry["mail_from"] for entry in sink.log()
            if entry["message_id"] in message_id_of}


def test_each_recipient_leaves_with_a_return_path_naming_it(redis_client, redis_url, start_dataplane, start_sink):
    pool = make_pool(7, [(IP, 1)])
    bridge = make_bridge(1, 7, SECRET)
    publish(redis_client, make_snapshot(SERVER, 1, [pool], [bridge]))
    sink = start_sink()
    plane = start_dataplane(redis_url, SERVER, delivery=True, args=["--route", f"*={sink.address}"])

    rcpts = ["a@example.net", "b@example.org", "c@example.net"]
    raw = message(1)
    ids = send_all(plane.port, bridge.username, SECRET, [(1, rcpts, raw)], sessions=1)
    header = raw.split(b"Message-ID: ", 1)[1].split(b"\r\n", 1)[0].decode()
    assert wait_until(lambda: len(sink.log()) == 3, timeout=30), sink.log()
    entries = sink.log()
    assert sorted(len(e["rcpts"]) for e in entries) == [1, 1, 1]  # one transaction per recipient
    paths = _return_paths(sink, {header})
    codec = _codec(plane)
    for index, rcpt in enumerate(rcpts):
        assert paths[rcpt].endswith("@" + HOSTNAME) and paths[rcpt].startswith("b-")
        token = codec.decode(paths[rcpt], {HOSTNAME})
        assert (token.message_id, token.rcpt_index) == (ids[1], index)

    # The pool names its own bounce domain: mail accepted from then on uses it.
    publish(redis_client, make_snapshot(SERVER, 2, [replace(pool, bounce_domain="bounces.acme.example")], [bridge]))
    plane.wait_version(redis_client, 2)
    raw = message(2)
    ids = send_all(plane.port, bridge.username, SECRET, [(2, ["d@example.net"], raw)], sessions=1)
    header = raw.split(b"Message-ID: ", 1)[1].split(b"\r\n", 1)[0].decode()
    assert wait_until(lambda: len(sink.log()) == 4, timeout=30), sink.log()
    address = _return_paths(sink, {header})["d@example.net"]
    assert address.endswith("@bounces.acme.example")
    token = codec.decode(address, {"bounces.acme.example", HOSTNAME})
    assert (token.message_id, token.rcpt_index) == (ids[2], 0)
    with pytest.raises(VerpError) as refused:  # an address is good only on the domain it was made for
        codec.decode(address.replace("bounces.acme.example", HOSTNAME))
    assert refused.value.reason is VerpReason.BAD_MAC


def test_rotating_the_key_never_breaks_mail_in_flight(redis_client, redis_url, start_dataplane, start_sink):
    bridge = make_bridge(1, 7, SECRET)
    publish(redis_client, make_snapshot(SERVER, 1, [make_pool(7, [(IP, 1)])], [bridge]))
    sink = start_sink()
    plane = start_dataplane(redis_url, SERVER, delivery=True, args=["--route", f"*={sink.address}"])

    before = send_all(plane.port, bridge.username, SECRET, [(n, [f"before{n}@example.net"], message(n))
                                                             for n in range(3)], sessions=1)
    assert wait_until(lambda: len(sink.log()) == 3, timeout=30), sink.log()
    old_paths = {entry["rcpts"][0]: entry["mail_from"] for entry in sink.log()}
    assert {_codec(plane).decode(p).key_id for p in old_paths.values()} == {1}

    rotated = subprocess.run([sys.executable, "-m", "control.cli", "--data-dir", str(plane.data_dir), "verp", "rotate"],
                             capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert rotated.returncode == 0 and "Key 2 now signs" in rotated.stdout, rotated.stderr

    # The workers look at the key file every second: new mail is signed with key 2 soon.
    sent = {}

    def signed_with_the_new_key() -> bool:
        n = 100 + len(sent)
        sent.update(send_all(plane.port, bridge.username, SECRET, [(n, [f"after{n}@example.net"], message(n))],
                             sessions=1))
        return wait_until(lambda: len(sink.log()) == 3 + len(sent), timeout=30) and (
            _codec(plane).decode(sink.log()[-1]["mail_from"]).key_id == 2)

    assert wait_until(signed_with_the_new_key, timeout=20, interval=0.3), [e["mail_from"] for e in sink.log()]

    # A bounce for mail sent before the rotation still decodes to its message.
    codec = _codec(plane)
    assert codec.keyring.ids == (1, 2)
    for n in range(3):
        token = codec.decode(old_paths[f"before{n}@example.net"])
        assert (token.message_id, token.rcpt_index, token.key_id) == (before[n], 0, 1)
