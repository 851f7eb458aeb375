"""Blocking calls off the event loop, at the lowest cost per call.

A small upload makes a handful of short blocking calls (open, write and fdatasync, link,
fsync a directory, unlink). ``anyio.to_thread.run_sync`` pays for a cancel scope, a
capacity limiter and async-library detection on each (about three times a bare
``run_in_executor``, measured on the small-upload benchmark's profile), so the hot path
uses :func:`off_loop`: the loop's default executor, with anyio's guarantee kept that a
cancelled caller does not move on while its call still runs (a staging file must not be
closed under a write).

:func:`use_io_threads` gives the loop an executor as large as anyio's default limit: the
default of ``min(32, cpus + 4)`` threads would queue a few dozen concurrent fsyncs.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

import anyio

Result = TypeVar("Result")

IO_THREADS = 40
"""Threads for blocking file calls (anyio's default limit for ``to_thread``)."""


def use_io_threads(loop: asyncio.AbstractEventLoop) -> ThreadPoolExecutor:
    """Give ``loop`` a default executor of :data:`IO_THREADS` threads (at start-up)."""
    executor = ThreadPoolExecutor(IO_THREADS, thread_name_prefix="ferry-io")
    loop.set_default_executor(executor)
    return executor


async def off_loop(function: Callable[..., Result], *args: object) -> Result:
    """``function(*args)`` in a worker thread; if the caller is cancelled meanwhile, the
    cancellation is raised only once the call has ended."""
    return await settled(asyncio.get_running_loop().run_in_executor(None, function, *args))


async def settled(pending: asyncio.Future[Result]) -> Result:
    """``pending``'s result. A caller cancelled meanwhile still waits for it, shielded
    from anyio's scopes and from ``Task.cancel`` alike, and then raises the cancellation:
    whatever ``pending`` does (a write, a commit) has ended when the caller moves on."""
    try:
        return await asyncio.shield(pending)
    except asyncio.CancelledError:
        with anyio.CancelScope(shield=True):
            while not pending.done():
                with contextlib.suppress(asyncio.CancelledError):
                    await asyncio.wait((pending,))
        raise
