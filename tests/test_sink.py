"""`poolmta sink`: the rule grammar, the header scan, and a real sink process on
loopback reached from chosen source addresses (its DATA reader and MAIL/RCPT parser:
test_smtp_wire.py)."""

from __future__ import annotations

import json
import os
import select
import signal
import smtplib
import socket
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from dataplane.sink.rules import (
    DEFAULT_RULES,
    Action,
    ActionKind,
    Rule,
    RuleSet,
    parse_action,
    parse_rule,
)
from dataplane.message_headers import header_fields
from dataplane.sink.server import LOGGED_HEADERS, peer_ip
from tests.dataplane_support import dot_stuffed
from tests.support import wait_until

REPLY = ActionKind.REPLY

# ---------------------------------------------------------------------------
# Rule grammar
# ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "spec, pattern, action",
    [
        ("bounce*=550", "bounce*", Action(REPLY, 550)),
        ("defer*=451x2", "defer*", Action(REPLY, 451, times=2)),
        ("slow*=delay:2.0", "slow*", Action(ActionKind.DELAY, seconds=2.0)),
        ("now*=delay:0", "now*", Action(ActionKind.DELAY, seconds=0.0)),
        ("stall*=hang", "stall*", Action(ActionKind.HANG)),
        ("stall*=HANG", "stall*", Action(ActionKind.HANG)),
        ("vip*=250", "vip*", Action(ActionKind.ACCEPT)),
        (
            "*@blocked.example=554:5.7.1 blocked by policy",
            "*@blocked.example",
            Action(REPLY, 554, text="5.7.1 blocked by policy"),
        ),
        ("spam?=550X3:no = never", "spam?", Action(REPLY, 550, times=3, text="no = never")),
        ("busy*=421x1", "busy*", Action(REPLY, 421, times=1)),
    ],
)
def test_parse_rule_accepts_the_grammar_and_round_trips(spec: str, pattern: str, action: Action) -> None:
    rule = parse_rule(spec)
    assert rule == Rule(pattern, action)
    assert parse_rule(str(rule)) == rule
    assert parse_action(str(action)) == action


@pytest.mark.parametrize(
    "spec, message",
    [
        ("bounce*", r"rule must be PATTERN=ACTION \(e\.g\. bounce\*=550\), got 'bounce\*'"),
        ("=550", r"rule '=550' has an empty pattern \(use \* to match every recipient\)"),
        ("a b=550", r"rule 'a b=550': the pattern must not contain whitespace"),
        ("x=", r"rule 'x=' has an empty action: expected 250, 4xx/5xx\[xN\]\[:text\], delay:SECONDS or hang"),
        ("x=bounce", r"rule 'x=bounce': unknown action 'bounce': expected 250, "),
        ("x=55", r"unknown action '55'"),
        ("x=999", r"reply code must be 250 or a 4xx/5xx code .*, got 999"),
        ("x=200", r"reply code must be 250 or a 4xx/5xx code .*, got 200"),
        ("x=460", r"second digit 0-5\), got 460"),
        ("x=250x2", r"250 \(accept\) takes no count and no text"),
        ("x=250:ok", r"250 \(accept\) takes no count and no text"),
        ("x=451x0", r"the count after x must be a whole number >= 1, got '0'"),
        ("x=451x", r"the count after x must be a whole number >= 1, got ''"),
        ("x=451xtwo", r"the count after x must be a whole number >= 1, got 'two'"),
        ("x=550:", r"reply text must be non-empty printable ASCII"),
        ("x=550:tab\there", r"reply text must be non-empty printable ASCII"),
        ("x=550:line\r\n250 ok", r"reply text must be non-empty printable ASCII"),
        ("x=550:" + "a" * 501, r"reply text is longer than 500 characters"),
        ("x=delay:abc", r"delay must be a number of seconds from 0 to 600 .*, got 'abc'"),
        ("x=delay:", r"delay must be a number of seconds"),
        ("x=delay:-1", r"delay must be a number of seconds"),
        ("x=delay:601", r"\(use hang for a destination that never answers\), got '601'"),
        ("x=delay:nan", r"delay must be a number of seconds"),
        ("x=delay:inf", r"delay must be a number of seconds"),
    ],
)
def test_parse_rule_rejects_bad_rules_with_a_message(spec: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_rule(spec)


def test_patterns_match_the_local_part_unless_they_name_a_domain() -> None:
    bounce = parse_rule("bounce*=550")
    assert bounce.matches("bounce-1@example.com")
    assert bounce.matches("BOUNCE@Example.Com")
    assert bounce.matches("bounce")  # no domain: the whole address is the local part
    assert not bounce.matches("xbounce@example.com")
    assert not bounce.matches("a@bounce.example")

    blocked = parse_rule("*@blocked.example=554")
    assert blocked.matches("anyone@Blocked.Example")
    assert not blocked.matches("anyone@blocked.example.com")
    assert not blocked.matches("blocked.example@elsewhere.example")


def test_the_first_matching_rule_decides_and_the_defaults_come_last() -> None:
    rules = RuleSet([parse_rule("bounce-ok*=250"), parse_rule("*@blocked.example=554"), *DEFAULT_RULES])
    assert rules.match("bounce-ok-1@example.com").action.kind is ActionKind.ACCEPT
    assert rules.match("bounce-1@example.com").action == Action(REPLY, 550)
    assert rules.match("defer-1@blocked.example").action == Action(REPLY, 554)
    assert rules.match("defer-1@example.com").action == Action(REPLY, 451, times=2)
    assert rules.match("Slow-1@example.com").action.kind is ActionKind.DELAY
    assert rules.match("alice@example.com") is None
    assert [str(rule) for rule in DEFAULT_RULES] == ["bounce*=550", "defer*=451x2", "slow*=delay:2.0"]


def test_rcpt_reply_counts_attempts_per_recipient() -> None:
    defer = parse_rule("defer*=451x2")
    assert [defer.rcpt_reply(n) for n in (1, 2, 3, 4)] == [
        "451 4.3.0 try again later (sink rule defer*)",
        "451 4.3.0 try again later (sink rule defer*)",
        None,
        None,
    ]
    assert parse_rule("bounce*=550").rcpt_reply(99) == "550 5.1.1 rejected (sink rule bounce*)"
    assert parse_rule("x*=553").rcpt_reply(1) == "553 5.1.3 rejected (sink rule x*)"
    assert parse_rule("x*=530").rcpt_reply(1) == "530 5.0.0 rejected (sink rule x*)"
    assert parse_rule("x*=554:5.7.1 go away").rcpt_reply(1) == "554 5.7.1 go away"
    assert parse_rule("slow*=delay:1").rcpt_reply(1) is None
    assert parse_rule("stall*=hang").rcpt_reply(1) is None


# ---------------------------------------------------------------------------
# Per-message work (pure): header scan, peer address
# ---------------------------------------------------------------------------


def test_header_fields_reads_only_the_header_block() -> None:
    message = (
        b"Subject: hello\r\n"
        b"x-virtual-MTA: acme-7-3-pool-12\r\n"
        b"Message-ID:  <m1@example.com> \r\n"
        b"X-Zone: US-1\r\n"
        b"X-Zone: EU-1\r\n"
        b"X-FeedType:\r\n"
        b"\tmarketing\r\n"
        b"\r\n"
        b"X-ServerID: 9\r\n"
    )
    assert header_fields(message, LOGGED_HEADERS) == {
        "message-id": "<m1@example.com>",
        "x-virtual-mta": "acme-7-3-pool-12",
        "x-feedtype": "marketing",
        "x-zone": "US-1",
        "x-serverid": None,
    }
    bare_lf = b"X-ServerID: 3\nX-Zone: MTA4\n  east\n\nX-Virtual-MTA: body\n"
    assert header_fields(bare_lf, ("x-serverid", "x-zone", "x-virtual-mta")) == {
        "x-serverid": "3",
        "x-zone": "MTA4  east",
        "x-virtual-mta": None,
    }
    assert header_fields(b"X-ServerID: 4", ("x-serverid",)) == {"x-serverid": "4"}
    assert header_fields(b"\r\nX-ServerID: 4\r\n", ("x-serverid",)) == {"x-serverid": None}
    assert header_fields(b"X-Zone: \xff\r\n\r\n", ("x-zone",)) == {"x-zone": "\ufffd"}


def test_peer_ip_shows_ipv4_mapped_addresses_as_ipv4() -> None:
    assert peer_ip("::ffff:127.0.0.3") == "127.0.0.3"
    assert peer_ip("127.0.0.3") == "127.0.0.3"
    assert peer_ip("0:0::1") == "::1"
    assert peer_ip("fe80::1%eth0") == "fe80::1"


# ---------------------------------------------------------------------------
# A real sink process
# ---------------------------------------------------------------------------

MESSAGE = (
    b"From: app@example.com\r\n"
    b"To: user@example.net\r\n"
    b"Subject: sink test\r\n"
    b"Message-ID: <t1@example.com>\r\n"
    b"X-Virtual-MTA: acme-7-3-pool-12\r\n"
    b"X-FeedType: transactional\r\n"
    b"X-Zone: US-1\r\n"
    b"X-ServerID: 3\r\n"
    b"\r\n"
    b".a line that starts with a dot\r\n"
    b".\r\n"
    b"..\r\n"
    b"caf\xc3\xa9 8-bit body\r\n"
)


@dataclass
class SinkProcess:
    proc: subprocess.Popen[str]
    listen: list[tuple[str, int]]
    log_path: Path
    counts_path: Path
    store_dir: Path
    stdout: list[str] = field(default_factory=list)

    @property
    def address(self) -> tuple[str, int]:
        return self.listen[0]

    def smtp(self, source: str = "127.0.0.3", timeout: float = 10.0) -> smtplib.SMTP:
        host, port = self.address
        return smtplib.SMTP(host, port, source_address=(source, 0), timeout=timeout)

    def log(self) -> list[dict]:
        if not self.log_path.exists():
            return []
        return [json.loads(line) for line in self.log_path.read_text().splitlines()]

    def counts(self) -> dict:
        return json.loads(self.counts_path.read_text())

    def counts_reach(self, **expected: object) -> bool:
        """Wait (without asserting how long) for the counts file to show `expected`."""
        return wait_until(lambda: all(self.counts().get(k) == v for k, v in expected.items()), timeout=10)

    def stop(self) -> tuple[int, str, str]:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        out, err = self.proc.communicate(timeout=10)
        return self.proc.returncode, "".join(self.stdout) + out, err


@pytest.fixture
def start_sink(tmp_path: Path) -> Iterator:
    started: list[SinkProcess] = []

    def start(*args: str, listen: str = "127.0.0.1:0") -> SinkProcess:
        run = tmp_path / f"sink{len(started)}"
        run.mkdir()
        paths = {"log_path": run / "log.jsonl", "counts_path": run / "counts.json", "store_dir": run / "store"}
        command = [sys.executable, "-m", "dataplane.sink", "--listen", listen]
        command += ["--log", str(paths["log_path"]), "--counts-file", str(paths["counts_path"])]
        command += ["--store", str(paths["store_dir"]), *args]
        proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        sink = SinkProcess(proc, [], **paths)
        started.append(sink)
        ready, _, _ = select.select([proc.stdout], [], [], 20)
        line = proc.stdout.readline() if ready else ""
        if not line.startswith("sink ready listen="):
            proc.kill()
            pytest.fail(f"the sink did not start: {line!r} {proc.communicate(timeout=10)}")
        for address in line.strip().removeprefix("sink ready listen=").split(","):
            host, _, port = address.rpartition(":")
            sink.listen.append((host, int(port)))
        return sink

    yield start
    for sink in started:
        if sink.proc.poll() is None:
            sink.proc.kill()
        sink.proc.communicate(timeout=10)


def _wire(message: bytes) -> bytes:
    """`message` (CRLF lines) as a DATA payload, terminator included."""
    return dot_stuffed(message.split(b"\r\n")[:-1]) + b".\r\n"


def _replies(sock: socket.socket, count: int) -> list[bytes]:
    """Read `count` complete SMTP replies (multi-line ones as one), first lines only."""
    data = b""
    replies: list[bytes] = []
    while len(replies) < count:
        chunk = sock.recv(65536)
        assert chunk, f"connection closed after {replies}"
        data += chunk
        while b"\r\n" in data:
            line, data = data.split(b"\r\n", 1)
            if line[3:4] != b"-":
                replies.append(line)
    assert not data
    return replies


def test_accepts_and_records_the_peer_it_was_reached_from(start_sink) -> None:
    sink = start_sink()
    with sink.smtp(source="127.0.0.3") as client:
        code, _ = client.ehlo("pool-ip-3.example.com")
        assert code == 250
        for extension in ("pipelining", "8bitmime", "smtputf8", "size"):
            assert client.has_extn(extension), extension
        refused = client.sendmail("bounces@example.com", ["user@example.net", "other@example.net"], MESSAGE)
    assert refused == {}

    [record] = sink.log()
    assert record["peer"] == "127.0.0.3"
    assert record["listen"] == "{}:{}".format(*sink.address)
    assert record["helo"] == "pool-ip-3.example.com"
    assert record["mail_from"] == "bounces@example.com"
    assert record["rcpts"] == ["user@example.net", "other@example.net"]
    assert record["size"] == len(MESSAGE)
    assert record["message_id"] == "<t1@example.com>"
    assert (record["x-virtual-mta"], record["x-feedtype"], record["x-zone"], record["x-serverid"]) == (
        "acme-7-3-pool-12",
        "transactional",
        "US-1",
        "3",
    )
    assert record["n"] == 1 and isinstance(record["received_at"], float)
    assert (sink.store_dir / "1.eml").read_bytes() == MESSAGE

    assert sink.counts_reach(accepted=1, accepted_rcpts=2, by_peer={"127.0.0.3": 1})
    counts = sink.counts()
    assert counts["peers"]["127.0.0.3"] == {"connections": 1, "accepted": 1, "rejected": 0, "deferred": 0, "hung": 0,
                                           "notices": 0}
    assert counts["bytes"] == len(MESSAGE) and counts["final"] is False


def test_seq_counts_every_event_and_a_log_line_says_when_the_counts_include_it(start_sink) -> None:
    sink = start_sink("--rule", "stall*=hang")
    with sink.smtp(source="127.0.0.10") as client:  # 1: the connection
        client.ehlo()
        client.mail("app@example.com")
        assert client.rcpt("bounce-1@example.net")[0] == 550  # 2: a rule-matched RCPT
        assert client.rcpt("user@example.net")[0] == 250  # no rule: not an event
        client.rset()
        assert client.sendmail("app@example.com", ["user@example.net"], MESSAGE) == {}  # 3: accepted
    [record] = sink.log()
    assert record["seq"] == 3
    assert sink.counts_reach(seq=3, connections=1, rejected=1, accepted=1)

    with socket.create_connection(sink.address, timeout=10, source_address=("127.0.0.10", 0)) as stalled:  # 4
        assert _replies(stalled, 1)[0].startswith(b"220 ")
        stalled.sendall(b"EHLO s.example\r\nMAIL FROM:<a@example.com>\r\nRCPT TO:<stall-1@example.net>\r\nDATA\r\n")
        assert [reply[:3] for reply in _replies(stalled, 4)] == [b"250", b"250", b"250", b"354"]  # 5: its RCPT
        stalled.sendall(_wire(MESSAGE))  # 6: held
        assert sink.counts_reach(seq=6, hung=1)
    assert sink.counts()["rcpt_attempts"] == {"bounce-1@example.net": 1, "stall-1@example.net": 1}


def test_bounce_star_is_rejected_at_rcpt_and_defer_star_twice_then_accepted(start_sink) -> None:
    sink = start_sink()
    with sink.smtp(source="127.0.0.4") as client:
        client.ehlo()
        client.mail("app@example.com")
        code, text = client.rcpt("bounce-1@example.net")
        assert (code, text) == (550, b"5.1.1 rejected (sink rule bounce*)")
        client.rset()
        # One good recipient: the message goes through, the bounce* one is refused.
        refused = client.sendmail("app@example.com", ["ok@example.net", "Bounce-2@example.net"], MESSAGE)
        assert refused == {"Bounce-2@example.net": (550, b"5.1.1 rejected (sink rule bounce*)")}

        codes = []
        for _ in range(3):
            client.mail("app@example.com")
            codes.append(client.rcpt("defer-1@example.net")[0])
            client.rset()
        assert codes == [451, 451, 250]
        assert client.sendmail("app@example.com", ["defer-1@example.net"], MESSAGE) == {}

    assert [record["rcpts"] for record in sink.log()] == [["ok@example.net"], ["defer-1@example.net"]]
    assert sink.counts_reach(accepted=2, rejected=2, deferred=2)
    counts = sink.counts()
    assert counts["rcpt_attempts"] == {"bounce-1@example.net": 1, "bounce-2@example.net": 1, "defer-1@example.net": 4}
    assert counts["peers"]["127.0.0.4"] == {"connections": 1, "accepted": 2, "rejected": 2, "deferred": 2, "hung": 0,
                                           "notices": 0}


def test_slow_star_delays_the_data_reply_but_accepts(start_sink) -> None:
    sink = start_sink("--rule", "slow*=delay:0.3")
    with sink.smtp() as client:
        assert client.sendmail("app@example.com", ["slow-1@example.net", "fast@example.net"], MESSAGE) == {}
    [record] = sink.log()
    assert record["rcpts"] == ["slow-1@example.net", "fast@example.net"]


def test_hang_never_answers_data_while_other_connections_are_served(start_sink) -> None:
    sink = start_sink("--rule", "stall*=hang")
    with socket.create_connection(sink.address, timeout=10, source_address=("127.0.0.5", 0)) as stalled:
        assert _replies(stalled, 1)[0].startswith(b"220 ")
        stalled.sendall(
            b"EHLO stall.example\r\nMAIL FROM:<app@example.com>\r\nRCPT TO:<stall-1@example.net>\r\nDATA\r\n"
        )
        assert [reply[:3] for reply in _replies(stalled, 4)] == [b"250", b"250", b"250", b"354"]
        stalled.sendall(_wire(MESSAGE))
        stalled.settimeout(0.5)
        with pytest.raises(socket.timeout):
            stalled.recv(1024)

        # Meanwhile other clients are served normally.
        with sink.smtp(source="127.0.0.6") as client:
            assert client.sendmail("app@example.com", ["user@example.net"], MESSAGE) == {}
        assert sink.counts_reach(accepted=1, hung=1)

        # Still open, still no reply.
        with pytest.raises(socket.timeout):
            stalled.recv(1024)
    assert [record["peer"] for record in sink.log()] == ["127.0.0.6"]
    assert sink.counts()["peers"]["127.0.0.5"]["hung"] == 1


def test_pipelined_commands_after_data_and_too_big_messages(start_sink) -> None:
    sink = start_sink("--max-message-size", "1000")
    second = b"Subject: two\r\n\r\n..\r\n.dot\r\n"
    with socket.create_connection(sink.address, timeout=10, source_address=("127.0.0.7", 0)) as sock:
        # Everything in one write: each DATA payload is followed by more commands.
        sock.sendall(
            b"EHLO pipe.example\r\n"
            b"MAIL FROM:<>\r\nRCPT TO:<a@example.net>\r\nRCPT TO:<bounce-9@example.net>\r\nDATA\r\n"
            + _wire(MESSAGE)
            + b"MAIL FROM:<app@example.com> BODY=8BITMIME\r\nRCPT TO:<b@example.net>\r\nDATA\r\n"
            + _wire(second)
            + b"MAIL FROM:<app@example.com>\r\nRCPT TO:<c@example.net>\r\nDATA\r\n"
            + b"x" * 2000
            + b"\r\n.\r\n"
            b"NOOP\r\nQUIT\r\n"
        )
        replies = [reply[:3] for reply in _replies(sock, 17)]
    assert replies == [
        b"220",
        b"250",  # EHLO
        b"250", b"250", b"550", b"354", b"250",  # null sender, one refused recipient
        b"250", b"250", b"354", b"250",
        b"250", b"250", b"354", b"552",  # too big, but drained: NOOP still answered
        b"250", b"221",
    ]  # fmt: skip
    assert (sink.store_dir / "1.eml").read_bytes() == MESSAGE
    assert (sink.store_dir / "2.eml").read_bytes() == second
    assert not (sink.store_dir / "3.eml").exists()
    assert [(record["mail_from"], record["rcpts"]) for record in sink.log()] == [
        ("<>", ["a@example.net"]),
        ("app@example.com", ["b@example.net"]),
    ]


def test_listens_on_several_addresses(start_sink) -> None:
    sink = start_sink(listen="127.0.0.1:0,127.0.0.2:0")
    assert [host for host, _ in sink.listen] == ["127.0.0.1", "127.0.0.2"]
    for host, port in sink.listen:
        with smtplib.SMTP(host, port, source_address=("127.0.0.8", 0), timeout=10) as client:
            client.sendmail("app@example.com", ["user@example.net"], MESSAGE)
    assert [record["listen"] for record in sink.log()] == [f"{host}:{port}" for host, port in sink.listen]


def test_sigterm_exits_0_with_final_counts_and_the_table(start_sink) -> None:
    sink = start_sink("--print-counts", "--show-last", "1")
    with sink.smtp(source="127.0.0.9") as client:
        client.sendmail("app@example.com", ["user@example.net"], MESSAGE)
        client.mail("app@example.com")
        client.rcpt("bounce-1@example.net")
    rc, out, err = sink.stop()
    assert rc == 0, err
    counts = sink.counts()
    assert counts["final"] is True and counts["pid"] == sink.proc.pid
    assert (counts["accepted"], counts["rejected"], counts["by_peer"]) == (1, 1, {"127.0.0.9": 1})
    assert "accepted 1 (1 rcpts" in out
    assert any(line.split()[:4] == ["127.0.0.9", "1", "1", "1"] for line in out.splitlines())
    assert "--- message 1 from 127.0.0.9" in out and "Subject: sink test" in out
    assert not [name for name in os.listdir(sink.counts_path.parent) if name.endswith(".tmp")]


def test_bad_arguments_exit_2_with_the_reason() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "dataplane.sink", "--rule", "bounce*=451x0"],
        capture_output=True,
        text=True,
        timeout=20,
    )
    assert result.returncode == 2
    assert "the count after x must be a whole number >= 1, got '0'" in result.stderr
    result = subprocess.run(
        [sys.executable, "-m", "dataplane.sink", "--listen", "localhost"], capture_output=True, text=True, timeout=20
    )
    assert result.returncode == 2
    assert "listen address must be HOST:PORT (e.g. 127.0.0.1:2525 or [::1]:2525), got 'localhost'" in result.stderr
