"""`dataplane.rest.messages`: JSON send requests built into MIME with the stdlib
`email` package, and raw messages with their envelope; no processes, no I/O.

The MIME is checked by parsing it back (the stdlib parser, with the strict
`email.policy.default`): structure, headers, bodies and attachments byte for
byte; hypothesis shows any text body and binary attachment survive the trip and
that no header value given in JSON can add a header line.
"""

from __future__ import annotations

import base64
import email
import email.policy

import pytest
from hypothesis import given
from hypothesis import strategies as st

from dataplane.rest.messages import from_json, from_raw
from dataplane.rest.problems import Problem

LETTER = {"from": "Shop <shop@example.com>", "to": "ann@example.net", "subject": "Hello", "text": "Hi Ann"}


def _parsed(content: bytes) -> email.message.EmailMessage:
    return email.message_from_bytes(content, policy=email.policy.default)


def _refusal(document) -> Problem:
    with pytest.raises(Problem) as refused:
        from_json(document)
    return refused.value


def test_a_text_message_has_its_envelope_headers_and_crlf_lines():
    submission = from_json({**LETTER, "cc": ["Bob <bob@example.net>"], "bcc": "hidden@example.org",
                            "reply_to": "help@example.com", "headers": {"X-Order": "12"}})
    assert submission.mail_from == "shop@example.com"
    assert submission.rcpt_tos == ("ann@example.net", "bob@example.net", "hidden@example.org")
    assert b"\r\n" in submission.content and b"\n" not in submission.content.replace(b"\r\n", b"")
    message = _parsed(submission.content)
    assert message["From"] == "Shop <shop@example.com>" and message["Cc"] == "Bob <bob@example.net>"
    assert message["Bcc"] is None and b"hidden@example.org" not in submission.content
    assert message["Reply-To"] == "help@example.com" and message["X-Order"] == "12"
    assert message["Date"] and message["Message-ID"].endswith("@example.com>")
    assert message.get_content_type() == "text/plain" and message.get_content().strip() == "Hi Ann"


def test_text_html_and_attachments_make_mixed_around_alternative():
    pdf = bytes(range(256)) * 4
    message = _parsed(from_json({**LETTER, "html": "<p>Hi</p>", "headers": {"Message-ID": "<given@example.com>"},
                                 "attachments": [{"filename": "a.pdf", "content_type": "application/pdf",
                                                  "content": base64.b64encode(pdf).decode()}]}).content)
    assert message.get_content_type() == "multipart/mixed" and message["Message-ID"] == "<given@example.com>"
    body, attachment = message.get_payload()
    assert body.get_content_type() == "multipart/alternative"
    assert [p.get_content_type() for p in body.get_payload()] == ["text/plain", "text/html"]
    assert attachment.get_filename() == "a.pdf" and attachment.get_content() == pdf


def test_html_alone_is_a_text_html_message():
    message = _parsed(from_json({**{k: v for k, v in LETTER.items() if k != "text"}, "html": "<b>x</b>"}).content)
    assert message.get_content_type() == "text/html"


@pytest.mark.parametrize("document, status, words", [
    ([], 400, "JSON object"),
    ({**LETTER, "colour": "red"}, 400, "unknown field"),
    ({**LETTER, "to": 5}, 400, "list of addresses"),
    ({**LETTER, "attachments": "x"}, 400, "must be a list"),
    ({k: v for k, v in LETTER.items() if k != "from"}, 422, "from is required"),
    ({**LETTER, "to": []}, 422, "at least one recipient"),
    ({**LETTER, "to": "ann"}, 422, "not an email address"),
    ({**LETTER, "to": "änn@example.net"}, 422, "not an email address"),
    ({k: v for k, v in LETTER.items() if k != "text"}, 422, "needs a body"),
    ({**LETTER, "subject": "a\r\nBcc: x@example.com"}, 422, "one line"),
    ({**LETTER, "headers": {"X-A": "b\nX-B: c"}}, 422, "one line"),
    ({**LETTER, "headers": {"Bad Name": "v"}}, 422, "not a header name"),
    ({**LETTER, "headers": {"content-type": "text/html"}}, 422, "set from the message's own fields"),
    ({**LETTER, "attachments": [{"filename": "a", "content": "!!!"}]}, 422, "not base64"),
    ({**LETTER, "attachments": [{"filename": "a", "content": "", "content_type": "nope"}]}, 422, "media type"),
])
def test_refusals_say_what_to_fix(document, status, words):
    problem = _refusal(document)
    assert problem.status == status and words in problem.detail, problem.detail


def test_an_error_quotes_only_a_short_prefix_of_the_input():
    problem = _refusal({**LETTER, "to": "x" * 5000})
    assert len(problem.detail) < 200


def test_raw_messages_take_their_envelope_from_the_query():
    submission = from_raw(b"Subject: x\r\n\r\nbody\r\n", "a@example.com", ["b@example.net, c@example.net",
                                                                         "b@example.net"])
    assert submission.rcpt_tos == ("b@example.net", "c@example.net") and submission.mail_from == "a@example.com"
    assert from_raw(b"Subject: x\r\n\r\nbody\r\n", "", ["b@example.net"]).mail_from == ""  # the null sender
    for sender, recipients in ((None, ["b@example.net"]), ("a@example.com", []), ("a@example.com", ["nope"])):
        with pytest.raises(Problem) as refused:
            from_raw(b"Subject: x\r\n\r\nbody\r\n", sender, recipients)
        assert refused.value.status == 422


@given(text=st.text(min_size=1), data=st.binary(max_size=2000), subject=st.text(max_size=200))
def test_any_text_and_attachment_survive_and_headers_stay_one_line(text, data, subject):
    document = {**LETTER, "text": text, "subject": subject,
                "attachments": [{"filename": "f.bin", "content": base64.b64encode(data).decode()}]}
    try:
        submission = from_json(document)
    except Problem as problem:  # only a subject with a control character is refused
        assert problem.status == 422 and "one line" in problem.detail, problem.detail
        assert any(c < " " and c != "\t" or c in "\x7f\x85\u2028\u2029" for c in subject), subject
        return
    message = _parsed(submission.content)
    body, attachment = message.get_payload()
    # set_content normalises line ends to the policy's CRLF, and a body ends with one
    expected = text.replace("\r\n", "\n").replace("\r", "\n")
    assert body.get_content().replace("\r\n", "\n").rstrip("\n") == expected.rstrip("\n")
    assert attachment.get_content() == data
    assert " ".join(str(message["Subject"]).split()) == " ".join(subject.split())  # folding may move spaces
    assert [k.lower() for k in message.keys()].count("bcc") == 0
