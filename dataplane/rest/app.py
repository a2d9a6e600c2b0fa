"""The REST Bridge: HTTP routes of every data-plane worker (aiohttp), on one port all
workers share (SO_REUSEPORT), beside /healthz and /readyz (`dataplane.rest.health`).

- `POST /v1/messages`: one message, JSON (`dataplane.rest.messages`) or raw
  `message/rfc822` with `?from=&to=`; 202 `{"id", "recipients", "rejected"}`.
- `POST /v1/messages/batch`: `{"messages": [...]}`, at most `HttpConfig.max_batch`;
  a result per message; 200 when every one was accepted, else 207.
- `GET /v1/messages/{id}`: status per recipient (`dataplane.rest.status`), to
  Bridges of the message's account only (another account's message is 404).
- `GET /openapi.json`: the OpenAPI 3.1 description (`dataplane.rest.openapi`).

Credentials are the Bridge's username and secret, as `Authorization: Basic
base64(username:secret)` or `Authorization: Bearer username:secret`. They are
checked as SMTP AUTH checks them (`bridge_auth.check_credentials`), and a failure
counts against the client address in the same shared throttle: a client blocked
for failed SMTP AUTHs gets 429 here, and the other way round. Right credentials
that the same client proved within the last seconds skip the throttle's round trip
to Redis (`bridge_auth.ProvenCredentials`): what a request costs is then the
message's, not the authentication's.

Past authentication a message follows the SMTP Bridge's path exactly: the same
content limits (`smtp_bridge.content_refusal`), the suppression lookup per
recipient, and `BridgeHandler.accept` (rotation, stamping, spool write, `sent`
count, journal) before the 202.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import logging

from aiohttp import web

from control.contract.snapshot import BridgeRoute

from .. import metrics
from ..bridge_auth import ProvenCredentials, SharedAuthThrottle, check_credentials
from ..config import DataplaneConfig
from ..routing import client_key
from ..smtp_bridge import BridgeEnvelope, BridgeHandler, content_refusal
from ..submission import Submitter
from . import problems, status
from .health import Health
from .messages import Submission, from_json, from_raw
from .openapi import OPENAPI
from .problems import Problem

log = logging.getLogger("poolmta.dataplane.rest")

JSON = "application/json"
RFC822 = "message/rfc822"
# Base64 grows an attachment by 4/3; the JSON around a message is far less than this.
JSON_OVERHEAD = 64 * 1024
# Bodies from this size on are parsed in a thread.
OFF_LOOP_BYTES = 256 * 1024
_BEARER = "bearer "
_BASIC = "basic "


def body_limit(config: DataplaneConfig) -> int:
    """The largest request body read: a message of the size limit, base64 encoded, in JSON."""
    return config.max_message_size * 4 // 3 + JSON_OVERHEAD


async def _built(document) -> Submission:
    """`messages.from_json`, in a thread: building MIME with the stdlib `email` package
    (base64 of the attachments included) is kept off the loop that serves SMTP too."""
    return await asyncio.to_thread(from_json, document)


def _credentials(header: str) -> tuple[bytes, bytes] | None:
    """(username, secret) from an Authorization header, or None when it holds none."""
    lowered = header[:7].lower()
    if lowered.startswith(_BASIC):
        try:
            decoded = base64.b64decode(header[len(_BASIC):].strip(), validate=True)
        except binascii.Error:
            return None
    elif lowered.startswith(_BEARER):
        decoded = header[len(_BEARER):].strip().encode("utf-8", "replace")
    else:
        return None
    username, colon, secret = decoded.partition(b":")
    return (username, secret) if colon and username and secret else None


class RestBridge:
    """The REST Bridge of one worker: authenticates, reads, hands messages to the
    SMTP Bridge's `BridgeHandler.accept`."""

    def __init__(self, config: DataplaneConfig, *, handler: BridgeHandler, throttle: SharedAuthThrottle,
                 redis, hostname) -> None:
        self.config = config
        self.handler = handler
        self.throttle = throttle
        self.proven = ProvenCredentials()
        self.redis = redis
        self._hostname = hostname  # () -> the name this server answers with

    # -- authentication ---------------------------------------------------

    async def authenticate(self, request: web.Request) -> BridgeRoute:
        """The Bridge whose credentials the request carries; 401, 429 or 503 otherwise."""
        header = request.headers.get("Authorization")
        if header is None:
            raise problems.unauthorized("Send the Bridge's username and secret: HTTP Basic, or "
                                        "'Authorization: Bearer username:secret'")
        credentials = _credentials(header)
        if credentials is None:
            raise problems.unauthorized("The Authorization header is neither 'Basic base64(username:secret)' "
                                        "nor 'Bearer username:secret'")
        routing = self.handler.loader.current
        if routing is None:
            raise problems.unavailable("No routing snapshot is loaded yet")
        bridge = check_credentials(routing, *credentials)
        if bridge is None:
            metrics.auth_failures.inc()
        client = client_key(request.remote or "")
        if bridge is not None and self.proven.proven(client, bridge):
            return bridge
        verdict = await self.throttle.attempt(request.remote or "", failed=bridge is None)
        if verdict.block:
            log.warning("REST request refused for %s: too many failed authentications", request.remote)
            raise problems.rate_limited(int(self.config.auth_throttle.window))
        if verdict.delay:
            await asyncio.sleep(verdict.delay)
        if bridge is None:
            log.info("REST authentication failed from %s", request.remote)
            raise problems.unauthorized("Unknown username, wrong secret, or a revoked Bridge")
        self.proven.remember(client, bridge)
        return bridge

    # -- reading ----------------------------------------------------------

    async def _body(self, request: web.Request) -> bytes:
        """The request body; 413 before reading when Content-Length says it is over the cap
        (aiohttp's `client_max_size` stops a body without one at the same cap)."""
        limit = body_limit(self.config)
        if request.content_length is not None and request.content_length > limit:
            raise problems.too_large(limit)
        return await request.read()

    async def _json(self, request: web.Request):
        if request.content_type != JSON:
            raise Problem(415, "unsupported-media-type", "Unsupported media type",
                          f"Send {JSON} (or {RFC822} to /v1/messages), not {request.content_type[:80]!r}")
        body = await self._body(request)
        try:
            # A body of megabytes takes the parser a while: off the loop, which serves SMTP too.
            return json.loads(body) if len(body) < OFF_LOOP_BYTES else await asyncio.to_thread(json.loads, body)
        except (ValueError, UnicodeDecodeError) as exc:
            raise problems.malformed(f"The body is not JSON: {str(exc)[:120]}") from None

    # -- sending ----------------------------------------------------------

    async def submit(self, request: web.Request, bridge: BridgeRoute, submission: Submission) -> dict:
        """Accept one message as the SMTP Bridge would: its result (id, recipients,
        rejected), or a Problem saying why nothing was queued."""
        config = self.config
        refusal = content_refusal(config, submission.content)
        if refusal is not None:
            raise problems.from_smtp_reply(refusal)
        if len(submission.rcpt_tos) > config.max_recipients:
            raise problems.invalid_message(f"Too many recipients: at most {config.max_recipients} per message")
        accepted, rejected = [], []
        for address in submission.rcpt_tos:
            reply = await self.handler.suppressions.rcpt_refusal(bridge, address)
            if reply is None:
                accepted.append(address)
            elif reply.startswith("4"):
                raise problems.from_smtp_reply(reply)
            else:
                rejected.append({"address": address, "detail": reply.split(" ", 2)[2]})
        if not accepted:
            raise problems.invalid_message("Every recipient was refused: "
                                           + "; ".join(r["detail"] for r in rejected[:3]))
        envelope = BridgeEnvelope()
        envelope.bridge = bridge
        envelope.auth_kind = "auth"
        envelope.mail_from = submission.mail_from
        envelope.rcpt_tos = accepted
        envelope.original_content = submission.content
        client = Submitter(request.remote or "", "", "HTTP", request.secure, self._hostname())
        acceptance = await self.handler.accept(envelope, client)
        if acceptance.message_id is None:
            raise problems.from_smtp_reply(acceptance.reply)
        return {"id": acceptance.message_id, "recipients": accepted, "rejected": rejected}

    async def send(self, request: web.Request) -> web.Response:
        """POST /v1/messages."""
        bridge = await self.authenticate(request)
        if request.content_type == RFC822:
            submission = from_raw(await self._body(request), request.query.get("from"),
                                  request.query.getall("to", []))
        else:
            submission = await _built(await self._json(request))
        return web.json_response(await self.submit(request, bridge, submission), status=202)

    async def send_batch(self, request: web.Request) -> web.Response:
        """POST /v1/messages/batch: each message accepted or refused on its own."""
        bridge = await self.authenticate(request)
        document = await self._json(request)
        messages = document.get("messages") if isinstance(document, dict) else None
        if not isinstance(messages, list) or not messages:
            raise problems.malformed('The body must be {"messages": [message, ...]} with at least one message')
        if len(messages) > self.config.http.max_batch:
            raise problems.invalid_message(f"A batch holds at most {self.config.http.max_batch} messages, "
                                           f"not {len(messages)}")
        results = []
        for message in messages:
            try:
                results.append({"status": 202, **await self.submit(request, bridge, await _built(message))})
            except Problem as problem:
                results.append({"status": problem.status, "problem": problem.body()})
        everything = all(r["status"] == 202 for r in results)
        return web.json_response({"results": results}, status=200 if everything else 207)

    async def message_status(self, request: web.Request) -> web.Response:
        """GET /v1/messages/{id}."""
        bridge = await self.authenticate(request)
        found = await status.message_status(self.redis, self.config.spool_dir, request.match_info["id"],
                                            bridge.user_id, self.config.server_id)
        return web.json_response(found)


def _problem_middleware(limit: int):
    """Every refusal as application/problem+json, aiohttp's own (404, 405, 413) included."""

    @web.middleware
    async def as_problem(request: web.Request, handler):
        try:
            return await handler(request)
        except Problem as problem:
            return problems.problem_response(problem)
        except web.HTTPRequestEntityTooLarge:
            return problems.problem_response(problems.too_large(limit))
        except web.HTTPException as exc:
            if exc.status < 400:
                raise
            return problems.problem_response(Problem(exc.status, f"http-{exc.status}", exc.reason, exc.reason))
        except Exception:
            log.exception("REST request %s %s failed", request.method, request.path[:80])
            return problems.problem_response(Problem(
                500, "internal", "Internal error", "The request failed on the server; nothing is known to be queued"))

    return as_problem


def build_app(bridge: RestBridge, health: Health) -> web.Application:
    """The worker's HTTP application: REST Bridge, OpenAPI description, health endpoints."""
    limit = body_limit(bridge.config)
    app = web.Application(client_max_size=limit, middlewares=[_problem_middleware(limit)])
    openapi = json.dumps(OPENAPI)
    app.add_routes([
        web.post("/v1/messages", bridge.send),
        web.post("/v1/messages/batch", bridge.send_batch),
        web.get("/v1/messages/{id}", bridge.message_status),
        web.get("/openapi.json", lambda _: web.Response(text=openapi, content_type=JSON)),
        web.get("/healthz", health.healthz),
        web.get("/readyz", health.readyz),
    ])
    return app
