"""Unique tokens for what needs no secrecy (request ids, lease tokens), without a syscall.

``uuid4()`` and ``secrets.token_hex()`` read the kernel's random source on each call; a
small upload took four of them, a visible share of its CPU on a virtual machine where
syscalls are dear. These tokens are a random per-process prefix and a counter: unique
across processes and nodes (the prefix is drawn again in every forked worker), never
guessable where it matters (upload ids and signing keys stay ``uuid4``/``secrets``).
"""

from __future__ import annotations

import itertools
import os
import secrets

_prefix = secrets.token_hex(8)
_counter = itertools.count()


def unique_token() -> str:
    """32 hex digits, different from every other token of any Ferry process."""
    return f"{_prefix}{next(_counter):016x}"


def _draw_again() -> None:
    global _prefix, _counter  # noqa: PLW0603 - per process by design
    _prefix = secrets.token_hex(8)
    _counter = itertools.count()


os.register_at_fork(after_in_child=_draw_again)
