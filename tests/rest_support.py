"""Helpers of the REST Bridge tests: a real aiohttp client on a data plane's HTTP
port, each request and its response validated against the served `/openapi.json`
with openapi-core (an independent reading of the OpenAPI 3.1 document)."""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass

import aiohttp
from openapi_core import Config, OpenAPI
from openapi_core.testing import MockRequest, MockResponse

from dataplane.rest.openapi import OPENAPI

_SPEC = OpenAPI.from_dict(OPENAPI, config=Config(
    extra_media_type_deserializers={"application/problem+json": json.loads}))


def basic(username: str, secret: str) -> str:
    """An HTTP Basic Authorization header value."""
    return "Basic " + base64.b64encode(f"{username}:{secret}".encode()).decode()


def bearer(username: str, secret: str) -> str:
    """The Bearer form of a Bridge's credentials."""
    return f"Bearer {username}:{secret}"


@dataclass
class Reply:
    status: int
    headers: dict
    body: bytes

    @property
    def json(self):
        return json.loads(self.body)


class RestClient:
    """Requests to one data plane's REST Bridge; `conform=True` (the default) checks the
    request and the response against the OpenAPI description."""

    def __init__(self, session: aiohttp.ClientSession, port: int, authorization: str | None = None) -> None:
        self.session = session
        self.base = f"http://127.0.0.1:{port}"
        self.authorization = authorization

    async def call(self, method: str, path: str, *, body: bytes | None = None, content_type: str = "application/json",
                   query=None, authorization: str | None = "default", path_pattern: str | None = None,
                   view_args: dict | None = None, conform: bool = True) -> Reply:
        headers = {}
        auth = self.authorization if authorization == "default" else authorization
        if auth is not None:
            headers["Authorization"] = auth
        if body is not None:
            headers["Content-Type"] = content_type
        async with self.session.request(method, self.base + path, data=body, headers=headers,
                                        params=query) as response:
            reply = Reply(response.status, dict(response.headers), await response.read())
        if conform:
            args = {}
            for key, value in (query or []):
                args.setdefault(key, []).append(value)
            request = MockRequest(self.base, method.lower(), path, path_pattern=path_pattern, view_args=view_args,
                                  args={k: v if len(v) > 1 else v[0] for k, v in args.items()},
                                  headers=headers, data=body or b"", content_type=content_type)
            _SPEC.validate_request(request)
            _SPEC.validate_response(request, MockResponse(
                reply.body, reply.status, headers=reply.headers,
                content_type=reply.headers.get("Content-Type", "").split(";")[0]))
        return reply

    async def send_json(self, message: dict, **kwargs) -> Reply:
        return await self.call("POST", "/v1/messages", body=json.dumps(message).encode(), **kwargs)

    async def send_raw(self, raw: bytes, sender: str, recipients: list[str], **kwargs) -> Reply:
        query = [("from", sender), *(("to", r) for r in recipients)]
        return await self.call("POST", "/v1/messages", body=raw, content_type="message/rfc822", query=query, **kwargs)

    async def status(self, message_id: str, **kwargs) -> Reply:
        return await self.call("GET", f"/v1/messages/{message_id}", path_pattern="/v1/messages/{id}",
                               view_args={"id": message_id}, **kwargs)


def assert_problem(reply: Reply, status: int) -> dict:
    """The problem+json body of a refusal with this status (RFC 9457 members present)."""
    assert reply.status == status, (reply.status, reply.body[:500])
    assert reply.headers["Content-Type"].startswith("application/problem+json"), reply.headers
    problem = reply.json
    assert problem["status"] == status and problem["title"] and problem["detail"], problem
    return problem
