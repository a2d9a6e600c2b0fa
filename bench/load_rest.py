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

import asyncio
import time

import aiohttp


async def drive_rest(host: str, port: int, username: str, secret: str, workload, message_bytes, sender: str,
                     recipient_domain: str, connect_timeout: float, reply_timeout: float) -> dict:
    """Send the workload through the REST Bridge at host:port; the result as `load.drive`
    returns it (accepted, failed, errors, started, elapsed, latencies in seconds)."""
    remaining = list(range(workload.messages, 0, -1))
    latencies: list[float] = []
    errors: list[str] = []
    url = f"http://{host}:{port}/v1/messages"
    auth = aiohttp.BasicAuth(username, secret)
    # One connection per session, kept alive for all of its requests.
    connector = aiohttp.TCPConnector(limit=workload.concurrency, force_close=False, keepalive_timeout=60)
    timeout = aiohttp.ClientTimeout(total=None, connect=connect_timeout, sock_read=reply_timeout)

    async def session(client: aiohttp.ClientSession) -> None:
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

    started = time.time()
    t0 = time.perf_counter()
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as client:
        tasks = [asyncio.create_task(session(client)) for _ in range(workload.concurrency)]
        _, pending = await asyncio.wait(tasks, timeout=workload.timeout)
        elapsed = time.perf_counter() - t0
        if pending:
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
            errors.append(f"stopped after --timeout {workload.timeout:g}s with messages left to send")
    return {"accepted": len(latencies), "failed": workload.messages - len(latencies), "errors": errors,
            "started": started, "elapsed": elapsed, "latencies": latencies}
