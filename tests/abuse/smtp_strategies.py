"""Hypothesis strategies for SMTP abuse: command lines built from the real verbs with
hostile arguments, AUTH responses, DATA bodies and junk, all as bytes on the wire.

Sizes are bounded so a fuzz run fits CI: a command line at most ~70 KB (past
aiosmtpd's 512-octet limit and any sane cap), a body at most ~70 KB (past the
fuzz Bridge's 32K message limit).
"""

from __future__ import annotations

import base64

from hypothesis import strategies as st

from tests.abuse.abuse_support import AUTH_SECRET, AUTH_USERNAME

# Commands that change what the next line is (a message, an AUTH response, a TLS
# handshake, the end): never in the middle of a pipelined batch (RFC 2920 section 3.1).
MODE_VERBS = frozenset({b"DATA", b"AUTH", b"STARTTLS", b"QUIT", b"BDAT"})

LINE_ENDS = st.sampled_from([b"\r\n", b"\r\n", b"\r\n", b"\n"])


def _no_lf(data: bytes) -> bytes:
    return data.replace(b"\n", b"")


def verb_of(line: bytes) -> bytes:
    return line.partition(b" ")[0].strip(b"\r").upper()


# Arguments: printable text, any Unicode (UTF-8, NUL and other controls included),
# raw bytes (8-bit, bare CR, NUL), and a few shapes that parsers trip on.
text_bytes = st.text(st.characters(codec="utf-8", exclude_characters="\r\n"), max_size=40).map(str.encode)
raw_bytes = st.binary(max_size=40).map(_no_lf)
tricky = st.sampled_from([
    b"", b" ", b"<>", b"<", b">", b"<<a@b>>", b"\x00", b"\r", b"\t", b"\xff\xfe", b"%s%n", b"'\"\\",
    b"\xc0\x80", b"\xed\xa0\x80", b"=?utf-8?b?AA==?=", b"(comment)", b"a" * 300,
])
argument = st.one_of(text_bytes, raw_bytes, tricky)

local_part = st.one_of(st.sampled_from([b"rcpt", b"a.b", b"\"quoted local\"", b"x" * 65, b"caf\xc3\xa9"]), raw_bytes)
domain = st.one_of(st.sampled_from([b"example.net", b"[127.0.0.1]", b"[IPv6:::1]", b"b\xc3\xbccher.example",
                                    b"-bad-.example", b"a" * 256 + b".example"]), raw_bytes)
address = st.one_of(
    st.just(b"<rcpt@example.net>"),
    st.builds(lambda local, dom: b"<" + local + b"@" + dom + b">", local_part, domain),
    argument,
)
keyword = st.one_of(st.sampled_from([b"SIZE", b"BODY", b"SMTPUTF8", b"RET", b"ENVID", b"NOTIFY", b"ORCPT",
                                     b"AUTH", b"size", b"X-FOO"]), raw_bytes)
parameter = st.one_of(
    st.sampled_from([b"SIZE=100", b"SIZE=99999999999999999999", b"SIZE=-1", b"SIZE=", b"BODY=8BITMIME",
                     b"BODY=BINARYMIME", b"BODY=7BIT", b"SMTPUTF8", b"RET=FULL", b"RET=HDRS", b"RET=full",
                     b"ENVID=abc+2Bdef", b"ENVID=" + b"e" * 200, b"NOTIFY=SUCCESS,FAILURE", b"NOTIFY=NEVER",
                     b"NOTIFY=NEVER,SUCCESS", b"ORCPT=rfc822;a@b.example", b"ORCPT=bogus", b"AUTH=<>"]),
    st.builds(lambda k, v: k + b"=" + v, keyword, argument),
)
parameters = st.lists(parameter, max_size=4).map(b" ".join)


def b64(data: bytes) -> bytes:
    return base64.b64encode(data)


GOOD_PLAIN = b64(b"\0" + AUTH_USERNAME.encode() + b"\0" + AUTH_SECRET.encode())
auth_response = st.one_of(
    st.sampled_from([GOOD_PLAIN, b64(AUTH_USERNAME.encode()), b64(AUTH_SECRET.encode()), b"*", b"", b"=",
                     b64(b"\0" + AUTH_USERNAME.encode() + b"\0wrong"), b64(b"\0\0"), b64(b"\xff\0\xfe\0\xfd")]),
    st.binary(max_size=60).map(b64),
    raw_bytes,
    st.integers(600, 70_000).map(lambda n: b64(b"\0u\0" + b"s" * n)),
)


def _line(verb: bytes, arg=None):
    if arg is None:
        return st.just(verb)
    return arg.map(lambda a: verb + b" " + a)


# Lines that keep the session in command mode: may go anywhere in a pipelined batch.
plain_command_line = st.one_of(
    st.builds(lambda verb, host: verb + b" " + host, st.sampled_from([b"EHLO", b"HELO", b"ehlo", b"Helo"]),
              st.one_of(st.just(b"client.example"), argument)),
    st.sampled_from([b"EHLO", b"HELO", b"RSET", b"NOOP", b"HELP", b"VRFY", b"EXPN"]),
    st.builds(lambda addr, params: b"MAIL FROM:" + addr + (b" " + params if params else b""), address, parameters),
    st.builds(lambda addr, params: b"RCPT TO:" + addr + (b" " + params if params else b""), address, parameters),
    st.builds(lambda verb, arg: verb + arg, st.sampled_from([b"MAIL", b"RCPT", b"MAIL FROM", b"RCPT TO:"]),
              argument),
    _line(b"RSET", argument), _line(b"NOOP", argument), _line(b"VRFY", argument),
    _line(b"EXPN", argument), _line(b"HELP", argument),
    st.builds(lambda verb, arg: verb + b" " + arg, st.from_regex(rb"\A[A-Za-z]{1,10}\Z"), argument)
    .filter(lambda line: verb_of(line) not in MODE_VERBS),
    raw_bytes.filter(lambda line: verb_of(line) not in MODE_VERBS),
    st.builds(lambda verb, n: verb + b" " + b"x" * n, st.sampled_from([b"NOOP", b"MAIL FROM:", b"EHLO", b"XYZ"]),
              st.sampled_from([500, 507, 508, 600, 1000, 4096, 70_000])),
)
# Lines after which the next bytes are something else: a message, an AUTH response,
# a TLS handshake, nothing (RFC 2920 section 3.1: last in a pipelined batch).
mode_command_line = st.one_of(
    st.sampled_from([b"DATA", b"STARTTLS", b"AUTH", b"BDAT", b"QUIT"]),
    _line(b"DATA", argument), _line(b"STARTTLS", argument), _line(b"QUIT", argument),
    st.sampled_from([b"AUTH PLAIN", b"AUTH LOGIN", b"AUTH PLAIN " + GOOD_PLAIN, b"AUTH CRAM-MD5", b"AUTH plain",
                     b"AUTH LOGIN " + b64(AUTH_USERNAME.encode())]),
    _line(b"AUTH PLAIN", auth_response), _line(b"AUTH LOGIN", auth_response), _line(b"AUTH", argument),
    st.builds(lambda n, last: b"BDAT %d%s" % (n, b" LAST" if last else b""), st.integers(-1, 10**12), st.booleans()),
)
command_line = st.one_of(plain_command_line, mode_command_line)


@st.composite
def transaction(draw) -> list[bytes]:
    """The command lines of a mostly proper transaction (EHLO, AUTH, MAIL, RCPTs, DATA),
    any of them possibly replaced by a hostile line: the path to the spool, abused."""
    def part(good: bytes, hostile) -> bytes:
        return good if draw(st.integers(0, 3)) else draw(hostile)

    lines = [
        part(b"EHLO client.example", plain_command_line),
        part(b"AUTH PLAIN " + GOOD_PLAIN, command_line),
        part(b"MAIL FROM:<sender@example.com>", plain_command_line),
    ]
    if draw(st.booleans()):
        lines[-1] += b" " + draw(parameters)
    for _ in range(draw(st.integers(1, 3))):
        # A recipient the Bridge relays to, or one the inbound listener takes reports for.
        rcpt = draw(st.sampled_from([b"<rcpt@example.net>", b"<postmaster@mta-test.example>"]))
        lines.append(part(b"RCPT TO:" + rcpt, plain_command_line))
    lines.append(part(b"DATA", command_line))
    return lines


def dot_stuffed(body: bytes) -> bytes:
    """`body` as a client puts it on the wire in DATA (RFC 5321 section 4.5.2), the
    end-of-data line included: nothing in it ends the message early."""
    body = body.replace(b"\r\n.", b"\r\n..")
    if body.startswith(b"."):
        body = b"." + body
    return body + b"\r\n.\r\n"


HEADERS = b"From: a@example.com\r\nTo: rcpt@example.net\r\nSubject: fuzz\r\n\r\n"
body = st.one_of(
    st.binary(max_size=200),
    st.builds(lambda headers, content: headers + content, st.sampled_from([HEADERS, b"", b"From: a\n\n"]),
              st.binary(max_size=2000)),
    st.builds(lambda pattern, n: pattern * n,
              st.sampled_from([b"x", b"\x00", b"\r", b"\n", b".\r\n", b"\r\n.", b"\xff", b"line\n"]),
              st.integers(0, 70_000)),
).map(dot_stuffed)
