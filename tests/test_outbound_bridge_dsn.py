"""RFC 3461 at the Bridge, in real processes: EHLO advertises DSN, bad NOTIFY /
ORCPT / RET / ENVID get 501, good ones are kept in the spool record as the
sender wrote them, survive a worker SIGKILL, and reach a next hop that
advertises DSN (a hop that does not advertise it gets the mail without them)."""

from __future__ import annotations

import os
import signal
import smtplib

import pytest

from tests.dataplane_support import Dataplane, make_bridge, make_pool, make_snapshot, message, publish, queued_id
from tests.support import wait_until

pytestmark = pytest.mark.slow

SERVER = 1
SECRET = "s3cret"
IP = "127.0.0.2"


def _session(plane: Dataplane, username: str) -> smtplib.SMTP:
    client = smtplib.SMTP(plane.host, plane.port, timeout=30)
    client.ehlo("client.example")
    client.login(username, SECRET)
    return client


def test_parameters_are_checked_kept_through_a_crash_and_relayed(redis_client, redis_url, tmp_path, start_sink):
    bridge = make_bridge(1, 7, SECRET)
    publish(redis_client, make_snapshot(SERVER, 1, [make_pool(7, [(IP, 1)])], [bridge]))
    accepting = Dataplane(tmp_path / "dp", redis_url, SERVER).start()  # --no-delivery: it stays in the spool
    try:
        client = _session(accepting, bridge.username)
        assert client.has_extn("dsn")
        for command, reply in [
            ("MAIL FROM:<s@example.com> RET=PART", "RET='PART': expected FULL or HDRS"),
            ("MAIL FROM:<s@example.com> ENVID=a\x01b", "501"),
            ("MAIL FROM:<s@example.com> ENVID=" + "x" * 101, "the limit is 100"),
            ("MAIL FROM:<s@example.com> RET=FULL RET=HDRS", "RET given twice"),
        ]:
            code, text = client.docmd(command)
            assert code == 501 and reply in f"{code} {text.decode()}", (command, code, text)
        assert client.docmd("MAIL FROM:<s@example.com> NOTIFY=NEVER")[0] == 555  # a RCPT parameter on MAIL
        assert client.docmd("MAIL FROM:<s@example.com> RET=hdrs ENVID=Spring+2B42")[0] == 250
        for command, reply in [
            ("RCPT TO:<a@plain.example> NOTIFY=NEVER,FAILURE", "cannot be combined"),
            ("RCPT TO:<a@plain.example> NOTIFY=SOMETIMES", "expected NEVER, SUCCESS, FAILURE or DELAY"),
            ("RCPT TO:<a@plain.example> ORCPT=a@example.net", "expected addr-type;address"),
            ("RCPT TO:<a@plain.example> ORCPT=rfc822;a+zz@example.net", "two hex digits"),
        ]:
            code, text = client.docmd(command)
            assert (code, text.decode().startswith("5.5.4")) == (501, True) and reply in text.decode(), command
        assert client.docmd("RCPT TO:<a@dsn.example> NOTIFY=failure,Delay ORCPT=rfc822;Ann+2BList@Example.NET")[0] == 250
        assert client.docmd("RCPT TO:<b@plain.example> NOTIFY=SUCCESS")[0] == 250
        assert client.docmd("RCPT TO:<c@dsn.example>")[0] == 250
        code, text = client.data(message(1))
        assert code == 250
        message_id = queued_id(text)
        client.quit()

        record = accepting.record(message_id)
        assert (record.dsn_ret, record.dsn_envid) == ("HDRS", "Spring+42")
        assert record.rcpt_options == ({"notify": "FAILURE,DELAY", "orcpt": ["rfc822", "Ann+List@Example.NET"]},
                                       {"notify": "SUCCESS"}, {})
        assert record.send_dsns is True and record.bounce_domain == "mta-test.example"
        assert record.mail_from == "s@example.com"  # the original sender stays: DSNs go to it

        worker = accepting.worker_pids()[0]
        os.kill(worker, signal.SIGKILL)
        assert wait_until(lambda: accepting.worker_pids()[0] != worker, 30), accepting.log()
    finally:
        accepting.stop()
        accepting.kill()

    # Delivery after the crash: the record still holds the parameters, and they go on.
    dsn_sink = start_sink("--dsn")
    plain_sink = start_sink()
    delivering = Dataplane(tmp_path / "dp", redis_url, SERVER, delivery=True, args=[
        "--route", f"dsn.example={dsn_sink.address}", "--route", f"*={plain_sink.address}"]).start()
    try:
        assert wait_until(lambda: len(dsn_sink.log()) == 2 and len(plain_sink.log()) == 1, 30), delivering.log()
    finally:
        delivering.stop()
    by_rcpt = {entry["rcpts"][0]: entry for entry in dsn_sink.log()}
    # One transaction per recipient (each has its own VERP return path), each with its parameters.
    assert by_rcpt["a@dsn.example"]["dsn_params"] == {
        "mail": ["RET=HDRS", "ENVID=Spring+2B42"], "rcpts": [["NOTIFY=FAILURE,DELAY", "ORCPT=rfc822;Ann+2BList@Example.NET"]]}
    assert by_rcpt["c@dsn.example"]["dsn_params"] == {"mail": ["RET=HDRS", "ENVID=Spring+2B42"], "rcpts": [[]]}
    plain = plain_sink.log()[0]
    assert plain["rcpts"] == ["b@plain.example"] and plain["dsn_params"] == {"mail": [], "rcpts": [[]]}
    assert {entry["peer"] for entry in (*dsn_sink.log(), plain)} == {IP}
