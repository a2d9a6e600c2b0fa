"""The load harness's REST client (`bench/load.py --rest`): the same N messages of S
bytes, sent through the REST Bridge (`POST /v1/messages`, raw `message/rfc822` with
the envelope in the query string, HTTP Basic with the Bridge's credentials) over C
concurrent HTTP sessions that keep their connection alive (`--per-connection` does
not apply: a session sends request after request on one connection, as a client
library with a connection pool does).

Latency is measured as for SMTP: from the request handed to the connection to the
202. It runs in the load generator's child process, like the SMTP client.
"""

from __future__ import annotations

import time

import aiohttp


async def drive_rest(host: str, port: int, username: str, secret: str, workload, run_sessions, message_bytes,
                     sender: str, recipient_domain: str, connect_timeout: float, reply_timeout: float) -> dict:
    """Send the workload through the REST Bridge at host:port, in `load.run_sessions`
    (passed in, as `load.message_bytes` is: this module is load.py's); its result."""
    url = f"http://{host}:{port}/v1/messages"
    auth = aiohttp.BasicAuth(username, secret)
    # One connection per session, kept alive for all of its requests.
    connector = aiohttp.TCPConnector(limit=workload.concurrency, force_close=False, keepalive_timeout=60)
    timeout = aiohttp.ClientTimeout(total=None, connect=connect_timeout, sock_read=reply_timeout)

    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as client:
        async def session(remaining: list[int], latencies: list[float], errors: list[str]) -> None:
            while remaining:
                n = remaining.pop()
                body = message_bytes(n, workload.size)
                try:
                    t0 = time.perf_counter()
                    async with client.post(url, data=body, auth=auth,
                                           params={"from": sender, "to": f"user{n}@{recipient_domain}"},
                                           headers={"Content-Type": "message/rfc822"}) as response:
                        text = await response.read()
                        if response.status != 202:
                            raise RuntimeError(f"HTTP {response.status}: {text[:200].decode('utf-8', 'replace')}")
                    latencies.append(time.perf_counter() - t0)
                except (aiohttp.ClientError, OSError, TimeoutError, RuntimeError) as exc:
                    if len(errors) < 10:
                        errors.append(f"{type(exc).__name__}: {exc} (message {n} not accepted)")

        return await run_sessions(workload, session)
