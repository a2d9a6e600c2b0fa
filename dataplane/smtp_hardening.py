"""What a hostile client cannot make poolmta's SMTP listeners (the Bridge and the
inbound listener) do, beyond aiosmtpd's own checks: `HardenedSMTP`, a mixin for
`ListenerSMTP`, so both have it. Each rule came from the abuse suite (`tests/abuse/`).

* Reply text. aiosmtpd echoes client input in some replies (`500 Error: command
  "X" not recognized`, `502 Could not VRFY X`). Echoed as is, a NUL, ESC, bare CR
  or other control character reaches the client's terminal or log, and an
  argument that was not UTF-8 (kept as surrogate escapes) made the reply fail to
  encode: an exception, an ERROR with a traceback, and a 451 instead of the
  answer. RFC 5321 section 4.2 allows only printable text and HT in a reply
  (UTF-8 too under SMTPUTF8, RFC 6531 section 3.7.4.2), and section 4.5.3.1.5 at
  most 512 octets per reply line, CRLF included.
* Closing with 421. aiosmtpd closes after the fifth unknown command with a 502;
  RFC 5321 section 3.8 wants 421 before a server closes the channel.
* STARTTLS once. aiosmtpd answered a second STARTTLS with 220 and stacked TLS
  inside TLS; a failed inner handshake then hit an asyncio bug and was logged as
  an ERROR. RFC 3207 section 4.2: after the handshake the server no longer
  offers STARTTLS, and a client must not send it again.
"""

from __future__ import annotations

import re

from aiosmtpd.smtp import syntax

REPLY_TLS_ACTIVE = "503 5.5.1 TLS is already active (RFC 3207 section 4.2)"
REPLY_TOO_MANY_UNKNOWN = "421 4.7.0 Too many unrecognized commands; closing connection"
# aiosmtpd's reply to the fifth unknown command, after which it closes the connection:
# RFC 5321 section 3.8 says a server that closes the channel answers 421, so that
# reply is given instead (aiosmtpd 1.4's text, matched exactly: see the abuse tests).
_AIOSMTPD_TOO_MANY_UNKNOWN = "502 5.5.1 Too many unrecognized commands, goodbye."

# C0 controls but HT, DEL, C1 controls, and lone surrogates (undecodable input bytes).
_UNSAFE = re.compile(r"[\x00-\x08\x0a-\x1f\x7f-\x9f\ud800-\udfff]")
MAX_REPLY_LINE = 510  # octets before the CRLF


def reply_line(text: str) -> str:
    """`text` as one reply line may carry it: every control character and
    undecodable byte replaced by "?", cut to MAX_REPLY_LINE octets of UTF-8."""
    safe = _UNSAFE.sub("?", text)
    encoded = safe.encode("utf-8")
    if len(encoded) > MAX_REPLY_LINE:
        safe = encoded[:MAX_REPLY_LINE].decode("utf-8", "ignore")
    return safe


class HardenedSMTP:
    """Mixin for an aiosmtpd SMTP protocol class (before it in the bases): every
    reply given as text goes out through `reply_line` (bytes replies are aiosmtpd's
    base64 AUTH challenges), and STARTTLS is refused once TLS is active."""

    async def push(self, status) -> None:
        if status == _AIOSMTPD_TOO_MANY_UNKNOWN:
            status = REPLY_TOO_MANY_UNKNOWN
        await super().push(reply_line(status) if isinstance(status, str) else status)

    @syntax("STARTTLS", when="tls_context")
    async def smtp_STARTTLS(self, arg: str) -> None:
        if self._tls_protocol is not None:  # aiosmtpd internal: the TLS layer, once started
            await self.push(REPLY_TLS_ACTIVE)
            return
        await super().smtp_STARTTLS(arg)
