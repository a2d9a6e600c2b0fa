"""The DKIM signer: every signature verifies with `dkimpy`, an independent
implementation, against the TXT record `dns_txt_record` builds; tampering breaks
it; keys, From domains and signing domains are read as documented."""

from __future__ import annotations

import base64
import re
from pathlib import Path

import dkim
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from control.contract.dkim_record import dns_txt_record, record_name
from dataplane.dkim_signer import (
    SIGNED_HEADERS,
    DkimKey,
    DkimKeyError,
    from_domain,
    sign,
    signing_domains,
)

WEAK_RSA_PEM = (Path(__file__).parent / "data" / "dkim" / "rsa-768-test-only.pem").read_bytes()
SIGNING = settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])

MESSAGE = (
    b"Received: from app1.internal (10.0.0.1) by relay.example.com\r\n"
    b"DKIM-Signature: v=1; a=rsa-sha256; d=client.example; s=c1; h=from;\r\n"
    b"\tbh=AAAA; b=BBBB\r\n"
    b"From: Example News <news@News.Example.com>\r\n"
    b"To: dana@example.org\r\n"
    b"To: lee@example.org\r\n"
    b"Subject: Your  weekly\r\n \tsummary  \r\n"
    b"Date: Fri, 31 May 2024 10:15:02 +0000\r\n"
    b"Message-ID: <1@news.example.com>\r\n"
    b"X-Virtual-MTA: news-7-2-pool-31\r\n"
    b"X-Mailer: ExampleMailer 5.2\r\n"
    b"\r\n"
    b"Hello   Dana,  \r\n\r\nthe summary.\r\n\r\n\r\n"
)


@pytest.fixture(scope="module")
def rsa_key() -> DkimKey:
    return DkimKey.from_private_key("news.example.com", "s2048", rsa.generate_private_key(65537, 2048))


@pytest.fixture(scope="module")
def ed25519_key() -> DkimKey:
    return DkimKey.from_private_key("news.example.com", "ed1", ed25519.Ed25519PrivateKey.generate())


@pytest.fixture(scope="module", params=["rsa", "ed25519"])
def key(request, rsa_key, ed25519_key) -> DkimKey:
    return rsa_key if request.param == "rsa" else ed25519_key


def verifies(signed: bytes, key: DkimKey) -> bool:
    """dkimpy's verdict on `signed`, with the key's record served for its DNS name."""
    expected = (record_name(key.selector, key.domain) + ".").encode()
    record = dns_txt_record(key.private_key).encode()

    def dnsfunc(name: bytes, timeout: int = 5) -> bytes | None:
        return record if name == expected else None

    return dkim.verify(signed, dnsfunc=dnsfunc)


def as_transmitted(message: bytes) -> bytes:
    """`message` as SMTP carries it: DATA ends with CRLF (RFC 5321 4.1.1.4), so a
    message that does not gets one added by the client before the final dot."""
    return message if message.endswith(b"\n") or not message else message + b"\r\n"


# --- every signature verifies ---------------------------------------------------------


def test_signature_verifies(key):
    assert verifies(sign(MESSAGE, key) + MESSAGE, key)


def test_signature_field_layout(key):
    field = sign(MESSAGE, key, timestamp=1717171717).decode("ascii")
    assert field.startswith(f"DKIM-Signature: v=1; a={key.algorithm}; c=relaxed/relaxed;")
    assert field.endswith("\r\n") and field.count("\r\n") == len(field.splitlines())
    assert all(len(line) <= 78 for line in field.split("\r\n"))
    unfolded = re.sub(r"\r\n[ \t]", " ", field)
    tags = [tag.split("=", 1)[0].strip() for tag in unfolded.split(":", 1)[1].split(";")]
    assert tags == ["v", "a", "c", "d", "s", "t", "h", "bh", "b"]  # b= last, no l=
    assert "d=news.example.com;" in unfolded and "t=1717171717;" in unfolded
    h = re.search(r"h=([^;]*);", unfolded).group(1).replace(" ", "").split(":")
    # Every present instance once, From once more; the client's DKIM-Signature,
    # Received, the stamped x-virtual-mta and X-Mailer not at all.
    assert h == ["from", "from", "to", "to", "subject", "date", "message-id"]


def test_every_signed_header_name_is_lower_case_and_listed_once():
    assert len(set(SIGNED_HEADERS)) == len(SIGNED_HEADERS)
    assert all(name == name.lower() for name in SIGNED_HEADERS)
    assert SIGNED_HEADERS[0] == b"from"


def test_message_without_body_or_with_bare_lf_verifies(key):
    for message in (
        b"From: a@news.example.com\r\nSubject: x\r\n\r\n",
        b"From: a@news.example.com\r\nSubject: x\r\n",  # no empty line: all header
        b"From: a@news.example.com\nSubject: x\n\nbare  LF \nlines\n\n",
    ):
        assert verifies(sign(message, key) + message, key), message


# Text with the edges canonicalisation cares about: WSP runs, trailing WSP, 8-bit
# UTF-8, and (in bodies) empty lines, long lines, CRs inside a line and bare LFs.
WORD = st.sampled_from(["hello", "Caf\u00e9", "\u00fcber", "x", "1234", "a-b", "(c)", "\u2603", "=?"])
SPACE = st.sampled_from([" ", "  ", "\t", " \t "])


@st.composite
def header_value(draw) -> bytes:
    words = draw(st.lists(WORD, min_size=1, max_size=8))
    text = ""
    for word in words:
        text += draw(st.sampled_from([" ", "  ", "\t", "\r\n ", "\r\n\t", " \r\n  "])) + word
    return (text + draw(st.sampled_from(["", " ", "\t  "]))).encode()


@st.composite
def body_line(draw) -> bytes:
    kind = draw(st.sampled_from(["words", "empty", "space", "long", "cr", "binary"]))
    if kind == "empty":
        return b""
    if kind == "space":
        return draw(SPACE).encode()
    if kind == "long":
        return (draw(WORD) * draw(st.integers(100, 400))).encode()  # past 998 octets too
    if kind == "cr":
        return b"a\rb \r c"
    if kind == "binary":
        return bytes(draw(st.lists(st.integers(0x80, 0xFF), max_size=20)))
    words = draw(st.lists(st.tuples(SPACE, WORD), max_size=10))
    return "".join(space + word for space, word in words).encode() + draw(SPACE).encode() * draw(st.integers(0, 1))


@st.composite
def messages(draw) -> bytes:
    fields = [(b"From", b" Sender <sender@news.example.com>")]
    fields += [(b"To", draw(header_value())) for _ in range(draw(st.integers(1, 3)))]
    optional = [b"Cc", b"Subject", b"Date", b"Reply-To", b"List-Unsubscribe", b"X-Mailer", b"Received"]
    fields += [(name, draw(header_value())) for name in draw(st.lists(st.sampled_from(optional), max_size=6))]
    if draw(st.booleans()):  # a client's own signature: kept, not signed over
        fields.append((b"DKIM-Signature", b" v=1; a=rsa-sha256; d=client.example;\r\n\tb=Zm9v"))
    fields = draw(st.permutations(fields))
    head = b"".join(name + b":" + value + b"\r\n" for name, value in fields)
    lines = draw(st.lists(body_line(), max_size=12))
    ending = draw(st.sampled_from([b"\r\n", b"\r\n", b"\n"]))
    body = ending.join(lines) + draw(st.sampled_from([b"", b"\r\n", b"\r\n\r\n", b" \r\n"]))
    return head + b"\r\n" + body


@SIGNING
@given(message=messages())
@example(message=b"From: s@news.example.com\r\n\r\n")
@example(message=b"From: s@news.example.com\r\nTo: a\r\n\r\n   ")
def test_generated_messages_verify_with_rsa(rsa_key, message):
    assert verifies(sign(message, rsa_key) + as_transmitted(message), rsa_key)


@SIGNING
@given(message=messages())
@example(message=b"From: s@news.example.com\r\n\r\n\r\n\r\n")
def test_generated_messages_verify_with_ed25519(ed25519_key, message):
    assert verifies(sign(message, ed25519_key) + as_transmitted(message), ed25519_key)


# --- tampering breaks it ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("before", "after"),
    [
        (b"the summary.", b"the summary!"),  # the body
        (b"Your  weekly", b"Our weekly"),  # a signed header
        (b"To: lee@", b"To: eve@"),  # the second instance of a signed header
        (b"From: Example News", b"From: Example Newz"),
    ],
)
def test_tampering_fails(key, before, after):
    signature = sign(MESSAGE, key)
    assert before in MESSAGE
    assert not verifies(signature + MESSAGE.replace(before, after), key)


@pytest.mark.parametrize("where", ["top", "bottom"])
def test_an_added_from_fails(key, where):
    signature = sign(MESSAGE, key)
    extra = b"From: Someone Else <ceo@news.example.com>\r\n"
    if where == "top":
        tampered = extra + MESSAGE
    else:
        tampered = MESSAGE.replace(b"\r\n\r\n", b"\r\n" + extra + b"\r\n", 1)
    assert not verifies(signature + tampered, key)


def test_changes_outside_the_signature_keep_it(key):
    signature = sign(MESSAGE, key)
    changed = (
        MESSAGE.replace(b"X-Mailer: ExampleMailer 5.2", b"X-Mailer: Other")
        .replace(b"b=BBBB", b"b=CCCC")  # the client's own signature is not signed over
        .replace(b"X-Virtual-MTA: news-7-2-pool-31", b"X-Virtual-MTA: other")
        .replace(b"Subject: Your  weekly", b"Subject:   Your weekly")  # relaxed: same
    )
    assert verifies(signature + b"Received: by mx.example.org\r\n" + changed, key)


def test_client_signature_is_kept(key):
    signed = sign(MESSAGE, key) + MESSAGE
    assert signed.endswith(MESSAGE) and signed.count(b"DKIM-Signature:") == 2


# --- keys -------------------------------------------------------------------------------


def test_from_pem_reads_pkcs8_and_traditional_rsa(rsa_key, ed25519_key):
    for key, private_format in (
        (rsa_key, serialization.PrivateFormat.TraditionalOpenSSL),
        (rsa_key, serialization.PrivateFormat.PKCS8),
        (ed25519_key, serialization.PrivateFormat.PKCS8),
    ):
        pem = key.private_key.private_bytes(
            serialization.Encoding.PEM, private_format, serialization.NoEncryption()
        )
        loaded = DkimKey.from_pem("News.Example.COM.", "S2048", pem)
        assert (loaded.domain, loaded.selector, loaded.algorithm) == ("news.example.com", "s2048", key.algorithm)
        assert dns_txt_record(loaded.private_key) == dns_txt_record(key.private_key)


def test_weak_rsa_key_is_refused():
    with pytest.raises(DkimKeyError, match=r"768 bits.*under 1024 bits \(RFC 8301"):
        DkimKey.from_pem("example.com", "old", WEAK_RSA_PEM)


@pytest.mark.parametrize(
    ("pem", "message"),
    [
        (b"not a key", "not an unencrypted PEM private key"),
        (
            ed25519.Ed25519PrivateKey.generate().private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.BestAvailableEncryption(b"secret"),
            ),
            "not an unencrypted PEM private key",
        ),
        (
            ec.generate_private_key(ec.SECP256R1()).private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            ),
            "an RSA or Ed25519 private key, not",
        ),
    ],
)
def test_unusable_pem_is_refused_without_quoting_it(pem, message):
    with pytest.raises(DkimKeyError) as caught:
        DkimKey.from_pem("example.com", "s1", pem)
    assert message in str(caught.value)
    assert caught.value.__cause__ is None  # no chained error that might quote the key
    assert caught.value.__context__ is None or caught.value.__suppress_context__
    assert not any(line.decode() in str(caught.value) for line in pem.splitlines()[1:-1])


@pytest.mark.parametrize(
    ("domain", "selector", "message"),
    [
        ("exa mple.com", "s1", "is not a domain name"),
        ("-bad.example", "s1", "is not a domain name"),
        ("[192.0.2.1]", "s1", "is not a domain name"),
        ("example.com", "s_1", "is not a DKIM selector"),
        ("example.com", "", "is not a DKIM selector"),
        ("example.com", "a..b", "is not a DKIM selector"),
    ],
)
def test_bad_domain_or_selector_is_refused(ed25519_key, domain, selector, message):
    with pytest.raises(DkimKeyError, match=message):
        DkimKey.from_private_key(domain, selector, ed25519_key.private_key)


def test_idn_domain_becomes_its_a_label(ed25519_key):
    key = DkimKey.from_private_key("B\u00fccher.example", "s1", ed25519_key.private_key)
    assert key.domain == "xn--bcher-kva.example"


def test_key_material_is_not_in_the_repr(rsa_key, ed25519_key):
    for key in (rsa_key, ed25519_key):
        assert "private_key" not in repr(key) and repr(key).startswith("DkimKey(domain=")


# --- the TXT record ------------------------------------------------------------------------


def test_txt_record_rsa_is_the_spki_der(rsa_key):
    record = dns_txt_record(rsa_key.private_key)
    assert record.startswith("v=DKIM1; k=rsa; p=MII")
    der = base64.b64decode(record.split("p=", 1)[1])
    assert serialization.load_der_public_key(der).public_numbers() == rsa_key.private_key.public_key().public_numbers()
    assert dns_txt_record(rsa_key.private_key.public_key()) == record


def test_txt_record_ed25519_is_the_raw_key(ed25519_key):
    record = dns_txt_record(ed25519_key.private_key)
    raw = base64.b64decode(record.removeprefix("v=DKIM1; k=ed25519; p="))
    assert len(raw) == 32  # RFC 8463 section 4.2
    assert raw == ed25519_key.private_key.public_key().public_bytes(
        serialization.Encoding.Raw, serialization.PublicFormat.Raw
    )


def test_txt_record_refuses_other_keys():
    with pytest.raises(TypeError, match="RSA or Ed25519 key, not"):
        dns_txt_record(ec.generate_private_key(ec.SECP256R1()))


def test_record_name():
    assert record_name("s1", "news.example.com") == "s1._domainkey.news.example.com"


# --- which domain signs ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("head", "domain"),
    [
        (b"From: Example News <news@News.Example.COM>", "news.example.com"),
        (b"From: news@example.com", "example.com"),
        (b"from :  news@example.com  (the news)", "example.com"),
        (b'From: "a@evil.example" <news@example.com>', "example.com"),
        (b"From: Example\r\n News\r\n <news@example.com>", "example.com"),
        ("From: M\u00fcller <m@b\u00fccher.example>".encode(), "xn--bcher-kva.example"),
        (b"To: a@example.com", None),  # no From
        (b"From: a@example.com\r\nFrom: b@example.com", None),  # two From fields
        (b"From: a@example.com, b@example.com", None),  # two addresses
        (b"From: undisclosed:;", None),
        (b"From: a@[192.0.2.1]", None),
        (b"From: nobody", None),
        (b"From: a@exa mple.com", None),
        (b"From: a@example.com.", None),
        (b"From: \xff@example.com", None),  # not UTF-8
    ],
)
def test_from_domain(head, domain):
    assert from_domain(head + b"\r\nSubject: x\r\n\r\nFrom: body@elsewhere.example\r\n") == domain


def test_from_domain_reads_only_the_header_block():
    assert from_domain(b"Subject: x\r\n\r\nFrom: a@example.com\r\n") is None


def test_signing_domains():
    assert signing_domains("a.b.example.com") == ["a.b.example.com", "b.example.com", "example.com"]
    assert signing_domains("example.com") == ["example.com"]
    assert signing_domains("localhost") == ["localhost"]
    # No public-suffix list: the caller only ever finds keys for registered domains.
    assert signing_domains("shop.example.co.uk")[-1] == "co.uk"
