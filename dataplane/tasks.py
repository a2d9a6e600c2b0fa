"""Stopping background tasks reliably."""

import asyncio


def reraise_if_cancelling() -> None:
    """Call inside an `except` block of a retry loop: when the running task is being
    cancelled, raise CancelledError instead of retrying.

    redis-py can surface a cancellation that lands mid-read as ConnectionError; a
    loop that retries on Redis errors would otherwise swallow the cancellation and
    keep a worker from ever stopping."""
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError
