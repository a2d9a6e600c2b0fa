"""The rules a reported outcome is judged by: RFC 3463 status codes, RFC 3464
actions, the permanent/temporary decision, and address normalisation."""

from __future__ import annotations

import pytest

from dataplane.reports.status import (
    decide,
    enhanced_code,
    normalise_action,
    normalise_address,
    reply_class,
    strip_type,
)


@pytest.mark.parametrize(
    ("text", "code"),
    [
        ("5.1.1", "5.1.1"),
        ("550 5.1.10 RESOLVER.ADR.RecipientNotFound", "5.1.10"),
        ("550-5.7.26 unauthenticated", "5.7.26"),
        ("(#4.4.1)", "4.4.1"),
        ("4.0.0 (unknown temporary failure)", "4.0.0"),
        ("host 192.0.2.5 said", ""),  # an address, not a code
        ("v5.1.1.2", ""),
        ("3.1.1", ""),  # class 3 does not exist (RFC 3463 section 2)
        ("5.1234.1", ""),
        ("", ""),
    ],
)
def test_enhanced_code(text: str, code: str):
    assert enhanced_code(text) == code


@pytest.mark.parametrize(
    ("text", "klass"),
    [("550 no such user", "5"), ("smtp; 452-over quota", "4"), ("250 ok", "2"), ("from 192.0.2.250", ""),
     ("order 5500", ""), ("599", ""), ("", "")],
)
def test_reply_class(text: str, klass: str):
    assert reply_class(text) == klass


@pytest.mark.parametrize(
    ("value", "action"),
    [("failed", "failed"), ("Failed", "failed"), ("failed (bad address)", "failed"), ("error", "failed"),
     ("delayed", "delayed"), ("delivered", "delivered"), ("relayed", "relayed"), ("expanded", "expanded"),
     ("bounced", None), ("", None), ("   ", None)],
)
def test_normalise_action(value: str, action: str | None):
    assert normalise_action(value) == action


@pytest.mark.parametrize(
    ("action", "status", "diagnostic", "decided"),
    [
        ("failed", "5.1.1", "", ("failed", "5.1.1", True)),
        ("failed", "4.4.7", "", ("failed", "4.4.7", False)),  # RFC 3463 3.1: persistent transient
        ("delayed", "5.1.1", "", ("delayed", "5.1.1", False)),
        ("delayed", "4.4.1", "", ("delayed", "4.4.1", False)),
        ("delivered", "2.0.0", "", ("delivered", "2.0.0", False)),
        ("relayed", "", "", ("relayed", "", False)),
        ("failed", "", "", ("failed", "", True)),  # the MTA's word alone
        ("failed", "", "550 no such user", ("failed", "", True)),
        ("failed", "", "452 over quota", ("failed", "", False)),
        ("failed", "garbled", "smtp; 550 5.2.2 full", ("failed", "5.2.2", True)),
        (None, "5.1.1", "", ("failed", "5.1.1", True)),
        (None, "4.2.2", "", ("delayed", "4.2.2", False)),
        (None, "2.1.5", "", ("delivered", "2.1.5", False)),
        (None, "", "", None),
    ],
)
def test_decide(action, status: str, diagnostic: str, decided):
    assert decide(action, status, diagnostic) == decided


@pytest.mark.parametrize(
    ("value", "address"),
    [
        ("rfc822; Jane.Doe@Example.ORG", "Jane.Doe@example.org"),
        ("RFC822;<jane@example.org>", "jane@example.org"),
        ("rfc822; jane@example.org (expanded from list@example.org)", "jane@example.org"),
        ("  <jane@example.org.>  ", "jane@example.org"),
        ("utf-8; \\x{5C71}\\x{7530}@example.jp", "山田@example.jp"),
        ("utf-8; 山田@例え.JP", "山田@例え.jp"),
        ("unknown; nair_s", "nair_s"),
        ("rfc822;", ""),
        ("Undisclosed Recipients", ""),
        ("x" * 400 + "@example.org", ""),
        ("", ""),
    ],
)
def test_normalise_address(value: str, address: str):
    assert normalise_address(value) == address


@pytest.mark.parametrize(
    ("value", "stripped"),
    [("dns; mx.example.org", "mx.example.org"), ("smtp;550 5.1.1 x", "550 5.1.1 x"),
     ("550 5.1.1 user unknown; try later", "550 5.1.1 user unknown; try later"), ("mx.example.org", "mx.example.org")],
)
def test_strip_type(value: str, stripped: str):
    assert strip_type(value) == stripped
