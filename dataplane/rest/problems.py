"""Errors of the REST Bridge as `application/problem+json` (RFC 9457): one `Problem`
exception per refusal, turned into a response by `problem_response`, and the SMTP
reply of an acceptance mapped to the HTTP status that means the same thing."""

from __future__ import annotations

import json

from aiohttp import web

PROBLEM_JSON = "application/problem+json"

# RFC 9457 3.1.1: "about:blank" says the title is the HTTP status phrase's meaning
# and nothing more; each problem here has its own title, so its type names it, as a
# URN (RFC 9457 3.1.1 allows a type URI that does not resolve).
TYPE_BASE = "urn:poolmta:problem:"

# The SMTP reply's first digit and code as the REST Bridge answers them: a 4yz
# (nothing was queued; try again) is 503 with Retry-After, a 552 is 413, any
# other 5yz (the message itself is refused: NUL, a line too long) is 422.
RETRY_AFTER_SECONDS = 30


class Problem(Exception):
    """A refusal: HTTP `status`, a short `title` (the same for every instance of the
    kind), a `detail` for this request, and headers to add (WWW-Authenticate, Retry-After)."""

    def __init__(self, status: int, kind: str, title: str, detail: str, *, headers: dict[str, str] | None = None):
        super().__init__(detail)
        self.status = status
        self.kind = kind
        self.title = title
        self.detail = detail
        self.headers = headers or {}

    def body(self) -> dict:
        """The problem details object (RFC 9457 3.1)."""
        return {"type": TYPE_BASE + self.kind, "title": self.title, "status": self.status, "detail": self.detail}


def problem_response(problem: Problem) -> web.Response:
    """The problem as an HTTP response with its status, headers and problem+json body."""
    return web.Response(status=problem.status, headers=problem.headers, content_type=PROBLEM_JSON,
                        text=json.dumps(problem.body()))


def malformed(detail: str) -> Problem:
    """400: the request cannot be read (not JSON, a field of the wrong type)."""
    return Problem(400, "malformed-request", "Malformed request", detail)


def unauthorized(detail: str) -> Problem:
    """401 with the challenges a client may answer (RFC 9110 11.6.1)."""
    return Problem(401, "unauthorized", "Bad or missing credentials", detail, headers={
        "WWW-Authenticate": 'Basic realm="poolmta", charset="UTF-8", Bearer realm="poolmta"'})


def invalid_message(detail: str) -> Problem:
    """422: the request is well formed but the message cannot be sent as given."""
    return Problem(422, "invalid-message", "Invalid message", detail)


def too_large(limit: int) -> Problem:
    """413: the request body is over the cap (read no further than it)."""
    return Problem(413, "too-large", "Request too large",
                   f"The request body is over the limit of {limit} bytes (the message size limit plus JSON overhead)")


def rate_limited(retry_after: int) -> Problem:
    """429: too many failed authentications from this client (counted with SMTP AUTH's)."""
    return Problem(429, "rate-limited", "Too many failed authentications",
                   "Too many failed authentications from this client address; try again later",
                   headers={"Retry-After": str(retry_after)})


def unavailable(detail: str, retry_after: int = RETRY_AFTER_SECONDS) -> Problem:
    """503 with Retry-After: nothing was queued, and trying again later may work."""
    return Problem(503, "unavailable", "Cannot accept messages right now", detail,
                   headers={"Retry-After": str(retry_after)})


def not_found(detail: str) -> Problem:
    """404: no such message for this Bridge's account (another account's is not found either)."""
    return Problem(404, "not-found", "Not found", detail)


def from_smtp_reply(reply: str) -> Problem:
    """The refusal an SMTP reply stands for (`dataplane.smtp_bridge`'s REPLY_* constants),
    its text, without the code, as the detail."""
    code, _, text = reply.partition(" ")
    detail = text.split(" ", 1)[1] if text[:1].isdigit() else text  # drop the enhanced status code
    if code.startswith("4"):
        return unavailable(detail)
    if code == "552":
        return Problem(413, "too-large", "Message too large", detail)
    return invalid_message(detail)
