"""SMTP command fuzzing against a real Bridge and inbound listener (a `python -m
dataplane` worker over real sockets): sessions of real verbs with hostile arguments, AUTH exchanges,
DATA bodies with NUL, bare CR/LF, 8-bit and overlong lines, pipelined batches,
STARTTLS (completed, or abandoned mid-handshake) and junk.

After every session:
* every reply line was a well-formed RFC 5321 reply, and each command got its one reply;
* the server closed the connection only right after 221 or 421 (or aiosmtpd's 502
  for too many unknown commands: see test_smtp_findings);
* what is in the spool is exactly what got "250 ... queued as", and each such
  message came from a session that authenticated (235) or from the trusted network;
* the worker still serves a normal authenticated transaction, is the same process,
  and logged no ERROR and no traceback.

The inbound listener (bounces and feedback reports, no AUTH) gets the same sessions,
and the same checks but the spool's.
"""

from __future__ import annotations

import smtplib

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from tests.abuse import smtp_strategies as s
from tests.abuse.abuse_support import AUTH_SECRET, AUTH_USERNAME, FuzzBridge
from tests.abuse.smtp_driver import SmtpSession, Transcript

pytestmark = [pytest.mark.abuse, pytest.mark.slow]

FUZZ = settings(max_examples=60, deadline=None, suppress_health_check=[
    HealthCheck.function_scoped_fixture, HealthCheck.too_slow, HealthCheck.data_too_large])

MAX_STEPS = 12

def _drive(session: SmtpSession, data: st.DataObject) -> None:
    """Draw and play steps that fit the session's state, as its replies say it is."""
    for _ in range(data.draw(st.integers(1, MAX_STEPS), label="steps")):
        if not session.open:
            return
        last = session.transcript.replies[-1]
        if last.code == 354:  # the message
            session.step(data.draw(s.body, label="body"))
        elif last.code == 334:  # an AUTH challenge: one response line
            session.step(data.draw(s.auth_response, label="auth response") + data.draw(s.LINE_ENDS))
        elif session.awaiting_tls:
            if data.draw(st.booleans(), label="complete the TLS handshake"):
                session.start_tls()
            else:  # garbage instead of a ClientHello: the server may close without a reply
                session.abandon(data.draw(st.binary(min_size=1, max_size=100), label="not TLS"))
                return
        else:
            kind = data.draw(st.sampled_from(["command", "pipelined", "transaction"]), label="step")
            end = data.draw(s.LINE_ENDS)
            if kind == "command":
                session.step(data.draw(s.command_line, label="command") + end)
            elif kind == "pipelined":
                lines = data.draw(st.lists(s.plain_command_line, min_size=1, max_size=5), label="batch")
                lines.append(data.draw(s.command_line, label="batch end"))
                session.step(b"".join(line + end for line in lines), replies=len(lines))
            else:
                for line in data.draw(s.transaction(), label="transaction"):
                    session.step(line + end)
                    if not session.open or session.transcript.replies[-1].code in (334, 354) or session.awaiting_tls:
                        break
    if not session.open:
        return
    last = session.transcript.replies[-1]
    if last.code == 354:
        session.step(s.dot_stuffed(b""))
    elif last.code == 334:
        session.step(b"*\r\n")
    elif session.awaiting_tls:
        session.start_tls()
    if session.open and data.draw(st.booleans(), label="QUIT (else just close)"):
        (reply,) = session.step(b"QUIT\r\n")
        assert reply.code == 221, reply
    session.close()


def _check_spool(bridge: FuzzBridge, before: set[str], transcript: Transcript, extra: set[str]) -> None:
    new = bridge.queued_ids() - before
    assert new == set(transcript.queued) | extra, (
        f"spooled {sorted(new)}, but the 250 replies named {transcript.queued} (+ {sorted(extra)})")
    for message_id in transcript.queued:
        record = bridge.record(message_id)
        if record.auth == "auth":
            assert message_id in transcript.queued_after_auth, f"{message_id} queued as AUTHed without a 235 before it"
        else:
            assert record.auth == "trusted" and transcript.trusted, (
                f"{message_id} queued ({record.auth!r}) for an untrusted client that did not authenticate")


def _normal_transaction(bridge: FuzzBridge) -> str:
    """One ordinary AUTH + message, as a real client sends it; its message id."""
    with smtplib.SMTP("127.0.0.1", bridge.port, timeout=30, source_address=(bridge.untrusted_source(), 0)) as client:
        client.login(AUTH_USERNAME, AUTH_SECRET)
        client.mail("sender@example.com")
        client.rcpt("rcpt@example.net")
        code, text = client.data(s.HEADERS + b"still serving\r\n")
    assert code == 250, (code, text)
    return text.decode().rpartition("queued as ")[2]


def _attack(bridge: FuzzBridge, port: int, source: str, data: st.DataObject, *, trusted: bool = False):
    """Play one drawn session on `port`; then check the worker is unharmed: the same
    process, serving a normal transaction, no ERROR logged. (transcript, the normal
    transaction's message id)."""
    workers = bridge.plane.worker_pids()
    mark = bridge.log_mark()
    session = SmtpSession("127.0.0.1", port, source, trusted=trusted)
    try:
        _drive(session, data)
    finally:
        session.close()
    normal = _normal_transaction(bridge)
    assert bridge.plane.worker_pids() == workers, "a worker was restarted"
    assert bridge.plane.proc.poll() is None, "the data plane exited"
    problems = bridge.problems_since(mark)
    assert not problems, "the data plane logged errors:\n" + "\n".join(problems)
    return session.transcript, normal


@FUZZ
@given(data=st.data())
def test_smtp_sessions_get_well_formed_replies_and_queue_only_what_is_allowed(fuzz_bridge: FuzzBridge, data):
    before = fuzz_bridge.queued_ids()
    trusted = data.draw(st.integers(0, 3), label="from the trusted network") == 0
    source = fuzz_bridge.trusted_source() if trusted else fuzz_bridge.untrusted_source()
    transcript, normal = _attack(fuzz_bridge, fuzz_bridge.port, source, data, trusted=trusted)
    event(f"queued: {bool(transcript.queued)}, authenticated: {transcript.authenticated}, "
          f"closed by the server: {transcript.closed_by_server}")
    _check_spool(fuzz_bridge, before, transcript, {normal})


@FUZZ
@given(data=st.data())
def test_inbound_sessions_get_well_formed_replies(fuzz_bridge: FuzzBridge, data):
    transcript, _ = _attack(fuzz_bridge, fuzz_bridge.plane.inbound_port, fuzz_bridge.untrusted_source(), data)
    event(f"a report accepted: {any(r.code == 250 and b'2.0.0' in r.text for r in transcript.replies)}")
