"""What a worker stamps and answers when a pool lacks something: no feed type means no
`x-feedtype:` line at all (never an empty one), and a pool with no IP at all (a shared
pool before the admin adds one) says so instead of "all paused"."""

from __future__ import annotations

import smtplib

import pytest

from control.contract.snapshot import IP_PAUSED
from dataplane.routing import Routing, stamp
from dataplane.smtp_bridge import REPLY_NO_USABLE_IP, REPLY_POOL_WITHOUT_IPS
from tests.dataplane_support import make_bridge, make_pool, make_snapshot, message, publish

SERVER = 41
SECRET = "s3cret"


def _stamped_names(pool_feed_type: str, bridge_feed_type: str) -> list[bytes]:
    pool = make_pool(1, [("192.0.2.1", 1)], feed_type=pool_feed_type, headers=[("X-Brand", "acme")])
    bridge = make_bridge(1, 1, SECRET, feed_type=bridge_feed_type)
    route = Routing(make_snapshot(SERVER, 1, [pool], [bridge])).route(bridge)
    out = stamp(b"From: a@example.com\r\nX-Feedtype: forged\r\n\r\nbody\r\n", route)
    head = out.split(b"\r\n\r\n", 1)[0]
    return [line.split(b":", 1)[0].lower() for line in head.split(b"\r\n")]


def test_no_feed_type_stamps_no_x_feedtype_and_still_drops_the_clients():
    names = _stamped_names("", "")
    assert b"x-feedtype" not in names
    assert names == [b"x-virtual-mta", b"x-zone", b"x-serverid", b"x-brand", b"from"]


@pytest.mark.parametrize(("pool_feed", "bridge_feed"), [("newsletter", ""), ("", "receipts"), ("a", "b")])
def test_a_feed_type_from_the_pool_or_the_bridge_is_stamped_once(pool_feed, bridge_feed):
    assert _stamped_names(pool_feed, bridge_feed).count(b"x-feedtype") == 1


def _data_reply(port: int, username: str) -> tuple[int, bytes]:
    with smtplib.SMTP("127.0.0.1", port, timeout=30) as client:
        client.login(username, SECRET)
        client.mail("me@acme.example")
        client.rcpt("you@example.net")
        return client.data(message(1))


def test_an_empty_pool_says_it_has_no_ips_and_a_paused_one_says_paused(redis_client, redis_url, start_dataplane):
    empty = make_pool(411, [], user_id=0, tag="shared")
    paused = make_pool(412, [("192.0.2.41", 1, IP_PAUSED)])
    bridges = [make_bridge(1, 411, SECRET, user_id=0), make_bridge(2, 412, SECRET)]
    publish(redis_client, make_snapshot(SERVER, 1, [empty, paused], bridges))
    plane = start_dataplane(redis_url, SERVER)

    code, text = _data_reply(plane.port, bridges[0].username)
    expected = REPLY_POOL_WITHOUT_IPS.format(pool=empty.internal_name)
    assert (code, text.decode()) == (451, expected.removeprefix("451 "))
    code, text = _data_reply(plane.port, bridges[1].username)
    assert (code, text.decode()) == (451, REPLY_NO_USABLE_IP.format(pool=paused.internal_name).removeprefix("451 "))
