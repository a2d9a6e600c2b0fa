"""The OpenAPI 3.1 description of the REST Bridge and the health endpoints, served
at `/openapi.json`. Tests validate real requests and responses against it."""

from __future__ import annotations

_ADDRESS = {"type": "string", "description": "`name@example.com` or `Name <name@example.com>`"}
_ADDRESSES = {"oneOf": [_ADDRESS, {"type": "array", "items": _ADDRESS}]}
_REF = "#/components/schemas/"
_PROBLEM_RESPONSE = {"content": {"application/problem+json": {"schema": {"$ref": _REF + "Problem"}}}}


def _problem(description: str, *, headers: dict | None = None) -> dict:
    response = {"description": description, **_PROBLEM_RESPONSE}
    if headers:
        response["headers"] = headers
    return response


_RETRY_AFTER = {"Retry-After": {"description": "seconds to wait before trying again",
                                "schema": {"type": "string", "pattern": "^[0-9]+$"}}}
_AUTH_ERRORS = {
    "401": _problem("bad or missing credentials", headers={"WWW-Authenticate": {
        "description": "the challenges accepted: Basic and Bearer", "schema": {"type": "string"}}}),
    "429": _problem("too many failed authentications from this client address (SMTP AUTH's counted too)",
                    headers=_RETRY_AFTER),
    "503": _problem("nothing was queued: no routing snapshot, the pool has no usable IP, the spool cannot "
                    "write, or the suppression list cannot be read; try again later", headers=_RETRY_AFTER),
}
_HEALTH = {"type": "object", "required": ["status"], "properties": {"status": {"type": "string"}}}
_CHECK = {"type": "object", "required": ["ok", "detail"],
          "properties": {"ok": {"type": "boolean"}, "detail": {"type": "string"}}}

OPENAPI: dict = {
    "openapi": "3.1.0",
    "info": {
        "title": "poolmta REST Bridge",
        "version": "1",
        "description": "Send mail through a Bridge over HTTP: the same Pool rotation, stamping, suppression "
                       "list and durable spool as the Bridge's SMTP credentials. Authenticate with the Bridge's "
                       "username and secret: HTTP Basic, or `Authorization: Bearer username:secret`.",
    },
    "security": [{"basic": []}, {"bearer": []}],
    "paths": {
        "/v1/messages": {"post": {
            "summary": "Send one message",
            "description": "A JSON message, built into MIME; or a raw RFC 5322 message (`message/rfc822`) with "
                           "its envelope in the query string. 202 once it is in the durable spool.",
            "parameters": [
                {"name": "from", "in": "query", "required": False, "schema": {"type": "string"},
                 "description": "envelope sender of a `message/rfc822` body (empty: the null sender)"},
                {"name": "to", "in": "query", "required": False, "style": "form", "explode": True,
                 "schema": {"type": "array", "items": {"type": "string"}},
                 "description": "envelope recipients of a `message/rfc822` body (repeatable, or comma-separated)"},
            ],
            "requestBody": {"required": True, "content": {
                "application/json": {"schema": {"$ref": _REF + "Message"}},
                "message/rfc822": {"schema": {"contentMediaType": "message/rfc822"}},  # OAS 3.1: binary, no type
            }},
            "responses": {
                "202": {"description": "queued", "content": {"application/json": {
                    "schema": {"$ref": _REF + "Accepted"}}}},
                "400": _problem("the body cannot be read (not JSON, a field of the wrong type)"),
                "413": _problem("the body, or the message built from it, is over the size limit"),
                "415": _problem("neither application/json nor message/rfc822"),
                "422": _problem("the message cannot be sent as given (bad address, no recipient, every "
                                "recipient suppressed, NUL bytes, a line too long...)"),
                **_AUTH_ERRORS,
            },
        }},
        "/v1/messages/batch": {"post": {
            "summary": "Send several messages",
            "description": "Each message is accepted or refused on its own: 200 when every one was queued, "
                           "207 when any was refused (its result holds the problem).",
            "requestBody": {"required": True, "content": {"application/json": {"schema": {
                "type": "object", "required": ["messages"], "additionalProperties": False,
                "properties": {"messages": {"type": "array", "minItems": 1, "maxItems": 100,
                                            "items": {"$ref": _REF + "Message"}}}}}}},
            "responses": {
                "200": {"description": "every message queued",
                        "content": {"application/json": {"schema": {"$ref": _REF + "BatchResults"}}}},
                "207": {"description": "some messages refused",
                        "content": {"application/json": {"schema": {"$ref": _REF + "BatchResults"}}}},
                "400": _problem("the body is not {\"messages\": [...]}"),
                "413": _problem("the body is over the size limit"),
                "415": _problem("not application/json"),
                "422": _problem("more messages than a batch may hold"),
                **_AUTH_ERRORS,
            },
        }},
        "/v1/messages/{id}": {"get": {
            "summary": "A message's status per recipient",
            "description": "Only to Bridges of the account that sent it; any other message is 404.",
            "parameters": [{"name": "id", "in": "path", "required": True, "schema": {"type": "string"}}],
            "responses": {
                "200": {"description": "the status", "content": {"application/json": {
                    "schema": {"$ref": _REF + "MessageStatus"}}}},
                "404": _problem("no such message for this account"),
                **_AUTH_ERRORS,
            },
        }},
        "/healthz": {"get": {
            "summary": "The worker is alive", "security": [],
            "responses": {"200": {"description": "alive",
                                  "content": {"application/json": {"schema": _HEALTH}}}},
        }},
        "/readyz": {"get": {
            "summary": "The worker can accept mail",
            "description": "Redis answers, a routing snapshot is loaded, the spool is writable, free disk is "
                           "above the floor.",
            "security": [],
            "responses": {
                "200": {"description": "ready", "content": {"application/json": {"schema": {"$ref": _REF + "Readiness"}}}},
                "503": {"description": "not ready", "content": {"application/json": {
                    "schema": {"$ref": _REF + "Readiness"}}}},
            },
        }},
        "/openapi.json": {"get": {
            "summary": "This description", "security": [],
            "responses": {"200": {"description": "OpenAPI 3.1", "content": {"application/json": {
                "schema": {"type": "object"}}}}},
        }},
    },
    "components": {
        "securitySchemes": {
            "basic": {"type": "http", "scheme": "basic", "description": "the Bridge's username and secret"},
            "bearer": {"type": "http", "scheme": "bearer", "bearerFormat": "username:secret"},
        },
        "schemas": {
            "Message": {
                "type": "object", "required": ["from"], "additionalProperties": False,
                "properties": {
                    "from": _ADDRESS, "to": _ADDRESSES, "cc": _ADDRESSES,
                    "bcc": {**_ADDRESSES, "description": "envelope recipients never shown in a header"},
                    "reply_to": _ADDRESSES, "subject": {"type": "string"},
                    "text": {"type": "string"}, "html": {"type": "string"},
                    "headers": {"type": "object", "additionalProperties": {"type": "string"},
                                "description": "extra header fields; not From, To, Cc, Bcc, Reply-To, "
                                               "Subject, MIME-Version or Content-*"},
                    "attachments": {"type": "array", "items": {"$ref": _REF + "Attachment"}},
                },
            },
            "Attachment": {
                "type": "object", "required": ["filename", "content"],
                "properties": {"filename": {"type": "string"},
                               "content_type": {"type": "string", "default": "application/octet-stream"},
                               "content": {"type": "string", "contentEncoding": "base64"}},
            },
            "Accepted": {
                "type": "object", "required": ["id", "recipients", "rejected"],
                "properties": {
                    "id": {"type": "string", "description": "the message id (as in the SMTP 250 reply)"},
                    "recipients": {"type": "array", "items": {"type": "string"}},
                    "rejected": {"type": "array", "items": {
                        "type": "object", "required": ["address", "detail"],
                        "properties": {"address": {"type": "string"}, "detail": {"type": "string"}}}},
                },
            },
            "BatchResults": {
                "type": "object", "required": ["results"],
                "properties": {"results": {"type": "array", "items": {"oneOf": [
                    {"allOf": [{"$ref": _REF + "Accepted"},
                               {"type": "object", "required": ["status"],
                                "properties": {"status": {"const": 202}}}]},
                    {"type": "object", "required": ["status", "problem"],
                     "properties": {"status": {"type": "integer", "minimum": 400},
                                    "problem": {"$ref": _REF + "Problem"}}},
                ]}}},
            },
            "MessageStatus": {
                "type": "object", "required": ["id", "queued", "recipients"],
                "properties": {
                    "id": {"type": "string"},
                    "queued": {"type": "boolean", "description": "still in the spool"},
                    "recipients": {"type": "array", "items": {
                        "type": "object", "required": ["address", "status", "final", "attempts", "reply",
                                                       "updated_ms"],
                        "properties": {
                            "address": {"type": "string"},
                            "status": {"type": "string",
                                       "description": "queued, delivered, deferred, bounced or complained"},
                            "final": {"type": "boolean"}, "attempts": {"type": "integer"},
                            "reply": {"type": "string"}, "updated_ms": {"type": "integer"}}}},
                },
            },
            "Readiness": {
                "type": "object", "required": ["status", "failing", "checks"],
                "properties": {
                    "status": {"enum": ["ready", "not ready"]},
                    "failing": {"type": "array", "items": {"enum": ["redis", "snapshot", "spool", "disk"]}},
                    "checks": {"type": "object", "required": ["redis", "snapshot", "spool", "disk"],
                               "additionalProperties": _CHECK},
                },
            },
            "Problem": {
                "type": "object", "required": ["type", "title", "status", "detail"],
                "description": "RFC 9457 problem details",
                "properties": {"type": {"type": "string", "format": "uri"}, "title": {"type": "string"},
                               "status": {"type": "integer"}, "detail": {"type": "string"}},
            },
        },
    },
}
