"""Running coroutines from the synchronous code that executes steps."""

from __future__ import annotations

import asyncio
import contextvars
import threading
from collections.abc import Coroutine
from typing import Any


async def maybe_await(value: Any) -> Any:
    """``value``, awaited first when it is a coroutine (hooks may be plain or ``async def``)."""
    if asyncio.iscoroutine(value):
        return await value
    return value


def run_coroutine(coro: Coroutine[Any, Any, Any]) -> Any:
    """Run a coroutine to completion from sync code, even inside a running loop.

    A running loop in this thread cannot be re-entered, so the coroutine then
    gets a fresh loop in a helper thread (with this thread's context
    variables, so messages still name the step as its workflow does).
    """
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coro)
    outcome: dict[str, Any] = {}
    context = contextvars.copy_context()

    def run() -> None:
        try:
            outcome["result"] = context.run(asyncio.run, coro)
        except BaseException as exc:  # re-raised in the caller's thread
            outcome["error"] = exc

    thread = threading.Thread(target=run, name="fuseline-async-step")
    thread.start()
    thread.join()
    if "error" in outcome:
        raise outcome["error"]
    return outcome["result"]


def run_if_coroutine(value: Any) -> Any:
    """What a hook returned, run to completion first when the hook is ``async def``."""
    if asyncio.iscoroutine(value):
        return run_coroutine(value)
    return value
