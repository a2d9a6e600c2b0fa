"""Reports as remote MTAs and feedback loops write them, built here from the RFC
examples' shapes (RFC 3464 appendix, RFC 5965 appendix B, a qmail bounce), and the
SMTP client side of the inbound listener: what the tests of `dataplane.inbound` send.
"""

from __future__ import annotations

import smtplib
from collections.abc import Sequence

from dataplane.return_path import open_codec
from dataplane.verp import VerpCodec
from tests.dataplane_support import HOSTNAME

BOUNDARY = "==report-boundary=="


def codec_of(data_dir) -> VerpCodec:
    """The VERP codec of a data directory's keyring, as the data plane makes it."""
    return open_codec(data_dir)


def return_path(codec: VerpCodec, message_id: str, rcpt_index: int, domain: str = HOSTNAME) -> str:
    """The VERP return path of a recipient of a message sent through the server.

    The delivery side sets it as the envelope sender; a remote MTA bounces to it.
    """
    return codec.encode(message_id, rcpt_index, domain)


def _crlf(text: str) -> bytes:
    return text.replace("\r\n", "\n").replace("\n", "\r\n").encode("utf-8")


def dsn(rcpt: str, *, status: str = "5.1.1", action: str = "failed", returned: str = "",
        diagnostic: str = "smtp; 550 5.1.1 user unknown", report_type: str = "delivery-status",
        mta: str = "mx.example.net", message_id: str = "dsn-1@mx.example.net") -> bytes:
    """An RFC 3464 DSN about one recipient, with `returned` (header lines) as the
    returned message's text/rfc822-headers part."""
    return _crlf(f"""From: Mail Delivery System <MAILER-DAEMON@{mta}>
To: <bounces@{HOSTNAME}>
Subject: Undelivered Mail Returned to Sender
Message-ID: <{message_id}>
MIME-Version: 1.0
Content-Type: multipart/report; report-type={report_type}; boundary="{BOUNDARY}"

--{BOUNDARY}
Content-Type: text/plain

I'm sorry to have to inform you that your message could not
be delivered to one or more recipients.

--{BOUNDARY}
Content-Type: message/delivery-status

Reporting-MTA: dns; {mta}
Arrival-Date: Mon, 30 Nov 2026 08:00:00 +0000

Final-Recipient: rfc822; {rcpt}
Original-Recipient: rfc822; {rcpt}
Action: {action}
Status: {status}
Remote-MTA: dns; {mta}
Diagnostic-Code: {diagnostic}

--{BOUNDARY}
Content-Type: text/rfc822-headers

{returned}
--{BOUNDARY}--
""")


def arf(*, rcpt: str = "", mail_from: str = "", source_ip: str = "", returned: str = "",
        feedback_type: str = "abuse", message_id: str = "arf-1@fbl.example.org") -> bytes:
    """An RFC 5965 feedback report (appendix B.2's shape) with `returned` (header lines,
    then a body) as the message/rfc822 part."""
    fields = [f"Feedback-Type: {feedback_type}", "User-Agent: ExampleFBL/1.0", "Version: 1"]
    fields += [f"Original-Mail-From: <{mail_from}>"] if mail_from else []
    fields += [f"Original-Rcpt-To: <{rcpt}>"] if rcpt else []
    fields += [f"Source-IP: {source_ip}"] if source_ip else []
    fields += ["Reported-Domain: example.com", "Arrival-Date: Mon, 30 Nov 2026 08:00:00 +0000"]
    machine = "\n".join(fields)
    return _crlf(f"""From: <fbl@fbl.example.org>
To: <fbl@{HOSTNAME}>
Subject: FW: spam report
Message-ID: <{message_id}>
MIME-Version: 1.0
Content-Type: multipart/report; report-type=feedback-report; boundary="{BOUNDARY}"

--{BOUNDARY}
Content-Type: text/plain

This is an email abuse report for an email message received from IP
{source_ip or "(redacted)"} on Mon, 30 Nov 2026 08:00:00 +0000.

--{BOUNDARY}
Content-Type: message/feedback-report

{machine}

--{BOUNDARY}
Content-Type: message/rfc822
Content-Disposition: inline

{returned}

--{BOUNDARY}--
""")


def qmail_bounce(rcpt: str, *, returned: str = "") -> bytes:
    """A qmail bounce (no DSN part: flufl.bounce's qmail detector finds the recipient)."""
    return _crlf(f"""From: MAILER-DAEMON@mx.example.net
To: bounces@{HOSTNAME}
Subject: failure notice
Message-ID: <qmail-1@mx.example.net>

Hi. This is the qmail-send program at mx.example.net.
I'm afraid I wasn't able to deliver your message to the following addresses.
This is a permanent error; I've given up. Sorry it didn't work out.

<{rcpt}>:
Sorry, no mailbox here by that name. (#5.1.1)

--- Below this line is a copy of the message.

{returned}
""")


def returned_headers(message_bytes: bytes) -> str:
    """The header lines of a message as a remote MTA returns them (text, LF ends)."""
    head = message_bytes.replace(b"\r\n", b"\n").split(b"\n\n", 1)[0]
    return head.decode("utf-8", "replace") + "\n"


def send_report(port: int, raw: bytes, rcpts: Sequence[str], *, mail_from: str = "") -> tuple[int, str]:
    """Send one report to the inbound listener on 127.0.0.1:`port` from `mail_from`
    ("" = the null sender, as bounces come); the reply to the end of DATA (code, text),
    or the first refusal."""
    with smtplib.SMTP("127.0.0.1", port, timeout=30) as client:
        client.ehlo("mx.example.net")
        code, text = client.mail(f"<{mail_from}>" if not mail_from else mail_from)
        if code != 250:
            return code, text.decode()
        for rcpt in rcpts:
            code, text = client.rcpt(rcpt)
            if code != 250:
                return code, text.decode()
        code, text = client.data(raw)
        return code, text.decode()
