"""RFC 3461 DSN parameters (`dataplane.dsn_request`): xtext, NOTIFY, ORCPT, RET and
ENVID as the SMTP bridge receives them, the 501 replies for bad ones, and the rule
that decides whether a DSN is due."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from dataplane.dsn_request import (
    MAX_ENVID,
    MAX_ORCPT,
    NOTIFY_NEVER,
    Action,
    DsnParamError,
    MailDsnParams,
    Notify,
    OriginalRecipient,
    RcptDsnParams,
    Ret,
    dsn_due,
    parse_envid,
    parse_mail_params,
    parse_notify,
    parse_orcpt,
    parse_rcpt_params,
    parse_ret,
    should_notify,
    xtext_decode,
    xtext_encode,
)

XCHARS = {chr(c) for c in range(33, 127)} - {"+", "="}


# --- xtext -------------------------------------------------------------------------


def test_xtext_examples():
    assert xtext_encode("user@example.com") == "user@example.com"
    assert xtext_encode("a+b=c d") == "a+2Bb+3Dc+20d"
    assert xtext_encode("é\r\n") == "+C3+A9+0D+0A"
    assert xtext_decode("a+2Bb+3Dc+20d") == "a+b=c d"
    assert xtext_decode("a+2bb") == "a+b"  # lower-case hex is accepted on the way in
    assert xtext_decode("") == ""
    assert xtext_decode("é@x", allow_utf8=True) == "é@x"


@pytest.mark.parametrize("bad", ["+", "+4", "+G0", "a b", "a=b", "é", "+FF", "+C3", "\r\n", "+ 41"])
def test_xtext_refuses(bad: str):
    with pytest.raises(DsnParamError) as caught:
        xtext_decode(bad)
    assert caught.value.reply.startswith("501 5.5.4 xtext")
    with pytest.raises(DsnParamError, match="no UTF-8 form"):
        xtext_encode("\ud800")


@given(st.text(max_size=200))
@example("+")
@example("=")
@example(" \x00\x7f\x80")
def test_xtext_round_trip(text: str):
    encoded = xtext_encode(text)
    assert set(encoded) <= XCHARS | {"+"}
    assert xtext_decode(encoded) == text
    assert xtext_encode(xtext_decode(encoded)) == encoded


# --- NOTIFY, RET, ENVID, ORCPT --------------------------------------------------------


def test_notify_values():
    assert parse_notify("NEVER") is NOTIFY_NEVER and parse_notify("never") == Notify()
    assert parse_notify("SUCCESS") == Notify(success=True)
    assert parse_notify("failure,DELAY") == Notify(failure=True, delay=True)
    assert parse_notify("DELAY,SUCCESS,FAILURE") == Notify(True, True, True)
    for words in itertools.chain.from_iterable(
        itertools.permutations(("SUCCESS", "FAILURE", "DELAY"), n) for n in (1, 2, 3)
    ):
        notify = parse_notify(",".join(words))
        assert parse_notify(str(notify)) == notify
    assert str(NOTIFY_NEVER) == "NEVER" and str(Notify(True, False, True)) == "SUCCESS,DELAY"


@pytest.mark.parametrize(("bad", "why"), [
    ("", "expected NEVER"), (",", "expected NEVER"), ("NEVER,SUCCESS", "cannot be combined"),
    ("SUCCESS,SUCCESS", "twice"), ("FAILURE,", "expected NEVER"), ("ALWAYS", "expected NEVER"),
    ("SUCCESS FAILURE", "expected NEVER"),
])
def test_notify_refuses(bad: str, why: str):
    with pytest.raises(DsnParamError, match=why):
        parse_notify(bad)


def test_ret_and_envid():
    assert parse_ret("FULL") is Ret.FULL and parse_ret("hdrs") is Ret.HDRS
    with pytest.raises(DsnParamError, match="expected FULL or HDRS"):
        parse_ret("BODY")
    assert parse_envid("QQ314159") == "QQ314159"
    assert parse_envid("id+2B1+20x") == "id+1 x"
    assert parse_envid("x" * MAX_ENVID) == "x" * MAX_ENVID
    for bad, why in (("", "empty"), ("x" * (MAX_ENVID + 1), "limit is 100"), ("a+0Db", "printable"),
                     ("+C3+A9", "printable"), ("a b", "xtext")):
        with pytest.raises(DsnParamError, match=why):
            parse_envid(bad)


def test_orcpt_values():
    assert parse_orcpt("rfc822;bob@example.com") == OriginalRecipient("rfc822", "bob@example.com")
    assert parse_orcpt("RFC822;Bob+2Bnews@Example.COM") == OriginalRecipient("rfc822", "Bob+news@Example.COM")
    assert parse_orcpt("utf-8;j\u00f6rg@example.com") == OriginalRecipient("utf-8", "j\u00f6rg@example.com")
    assert parse_orcpt("rfc822;+C3+A9@x") == OriginalRecipient("rfc822", "\u00e9@x")
    assert parse_orcpt("x-local;a;b") == OriginalRecipient("x-local", "a;b")  # the address is not parsed
    long = "rfc822;" + "a" * (MAX_ORCPT - 7)
    assert parse_orcpt(long).address == "a" * (MAX_ORCPT - 7)


@pytest.mark.parametrize(("bad", "why"), [
    ("bob@example.com", "addr-type;address"), (";bob@x", "addr-type;address"), ("rfc 822;b@x", "addr-type;address"),
    ("rfc822;", "empty address"), ("rfc822;a+0D+0ARCPT", "control characters"), ("rfc822;a+00", "control"),
    ("rfc822;j\u00f6rg@x", "must be written as"), ("rfc822;a b", "must be written as"),
    ("rfc822;" + "a" * MAX_ORCPT, "limit is 500"),
])
def test_orcpt_refuses(bad: str, why: str):
    with pytest.raises(DsnParamError, match=why):
        parse_orcpt(bad)


# --- the MAIL and RCPT parameter lists --------------------------------------------------


def test_parameter_lists_as_aiosmtpd_hands_them_over():
    assert parse_mail_params([]) == MailDsnParams()
    assert parse_mail_params(["SIZE=1000", "BODY=8BITMIME", "SMTPUTF8"]) == MailDsnParams()
    assert parse_mail_params(["BODY=8BITMIME", "ret=hdrs", "EnvId=QQ+2B1"]) == MailDsnParams(Ret.HDRS, "QQ+1")
    assert parse_rcpt_params(["NOTIFY=SUCCESS,FAILURE", "ORCPT=rfc822;r@example.net", "XFOO"]) == RcptDsnParams(
        Notify(success=True, failure=True), OriginalRecipient("rfc822", "r@example.net"))
    assert parse_rcpt_params(["notify=never"]) == RcptDsnParams(notify=NOTIFY_NEVER)
    # Each list is checked only for its own command's parameters.
    assert parse_rcpt_params(["RET=BOGUS"]) == RcptDsnParams()


@pytest.mark.parametrize(("params", "why"), [
    (["RET=FULL", "RET=HDRS"], "RET given twice"), (["RET"], "RET needs a value"), (["ENVID="], "ENVID needs a value"),
    (["RET=FULL", "ret=full"], "twice"),
])
def test_mail_parameter_lists_refused(params, why):
    with pytest.raises(DsnParamError, match=why):
        parse_mail_params(params)


@pytest.mark.parametrize(("params", "why"), [
    (["NOTIFY=NEVER", "NOTIFY=SUCCESS"], "NOTIFY given twice"), (["ORCPT"], "ORCPT needs a value"),
    (["NOTIFY=SOMETIMES"], "NOTIFY value"),
])
def test_rcpt_parameter_lists_refused(params, why):
    with pytest.raises(DsnParamError, match=why):
        parse_rcpt_params(params)


@settings(max_examples=300)
@given(keyword=st.sampled_from(["NOTIFY", "ORCPT", "RET", "ENVID"]), value=st.text(max_size=600))
@example(keyword="ORCPT", value="rfc822;\r\n250 OK")
@example(keyword="ENVID", value="\u00e9" * 40)
def test_a_bad_value_gets_a_short_safe_501(keyword: str, value: str):
    try:
        parse_mail_params([f"{keyword}={value}"])
        parse_rcpt_params([f"{keyword}={value}"])
    except DsnParamError as exc:
        reply = exc.reply
        assert reply.startswith("501 5.5.4 ")
        assert reply.isascii() and "\r" not in reply and "\n" not in reply
        assert len(reply) < 160  # quotes at most 32 characters of the input


# --- whether a DSN is due ---------------------------------------------------------------


def test_should_notify_follows_notify():
    every = Notify(True, True, True)
    for action in Action:
        assert should_notify(every, action) is True
        assert should_notify(NOTIFY_NEVER, action) is False
        assert should_notify(None, action) is (action is Action.FAILED)  # the default: failures only
    assert should_notify(Notify(failure=True), Action.DELAYED) is False
    assert should_notify(Notify(delay=True), Action.DELAYED) is True
    assert should_notify(Notify(success=True), Action.RELAYED) is True
    assert should_notify(Notify(success=True), Action.FAILED) is False


@given(
    notify=st.one_of(st.none(), st.builds(Notify, st.booleans(), st.booleans(), st.booleans())),
    action=st.sampled_from(list(Action)),
    null=st.sampled_from(["", "<>", " <> ", "  "]),
)
def test_the_null_sender_never_gets_a_dsn(notify, action, null):
    assert dsn_due(null, notify, action) is False
    assert dsn_due("sender@example.com", notify, action) is should_notify(notify, action)
