"""SHA-256 whose running state can be saved and resumed, so an upload's hash follows it.

An upload's SHA-256 is computed while its bytes stream in, PATCH after PATCH. hashlib's
state cannot be saved, so on its own the hash lives in one process's memory and any other
process (another worker, another node, the same one after a restart) must read every byte
again. :class:`ResumableSha256` is OpenSSL's own SHA-256 (``SHA256_Init/Update/Final`` of
the libcrypto that Python's ``hashlib`` already loads, through ctypes), whose context is a
plain 112-byte struct (``SHA256_CTX``: eight state words, the bit count, one partial
block): :meth:`ResumableSha256.state` saves it with each acknowledged offset, and any
process resumes from it.

Hashing a large block releases the GIL, like hashlib does above 2 KiB, so hashing in a
worker thread does not stall the event loop. The calls of a few microseconds (starting,
finishing, hashing a small block) keep it: the event loop makes them, and a thread that
gives the GIL up must win it back, which can take a whole switch interval (5 ms) while the
database writer or a staging writer holds it.

The saved state carries the number of bytes it has hashed, which :meth:`resume` checks
against the offset it is resumed at: a state from another offset is refused, never used.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import struct
from functools import cache

_CTX_SIZE = 112
"""``sizeof(SHA256_CTX)``: h[8], Nl, Nh, data[16], num, md_len (4-byte words)."""
_STATE_VERSION = b"S2561"
"""Prefix of a saved state, so a future layout is never misread."""
GIL_RELEASE_SIZE = 64 * 1024
"""Blocks from this size are hashed with the GIL released (~25 us of work and more)."""


@cache
def _libcrypto() -> ctypes.CDLL:
    """libcrypto's functions called with the GIL released (for large blocks)."""
    return _load(ctypes.CDLL)


@cache
def _libcrypto_holding_the_gil() -> ctypes.CDLL:
    """The same functions, called with the GIL held (for calls of a few microseconds)."""
    return _load(ctypes.PyDLL)


def _load(kind: type[ctypes.CDLL]) -> ctypes.CDLL:
    names = [ctypes.util.find_library("crypto"), "libcrypto.so.3", "libcrypto.so"]
    errors: list[str] = []
    for name in names:
        if not name:
            continue
        try:
            library = kind(name)
        except OSError as exc:
            errors.append(str(exc))
            continue
        library.SHA256_Init.argtypes = [ctypes.c_void_p]
        library.SHA256_Update.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_size_t]
        library.SHA256_Final.argtypes = [ctypes.c_char_p, ctypes.c_void_p]
        return library
    raise OSError("libcrypto (OpenSSL) was not found: " + "; ".join(errors))


class ResumableSha256:
    """A SHA-256 with the hashlib interface plus :meth:`state` and :meth:`resume`."""

    __slots__ = ("_ctx",)

    name = "sha256"
    digest_size = 32

    def __init__(self, data: bytes = b"") -> None:
        self._ctx = ctypes.create_string_buffer(_CTX_SIZE)
        _libcrypto_holding_the_gil().SHA256_Init(self._ctx)
        if data:
            self.update(data)

    def update(self, data: bytes | bytearray | memoryview, /) -> None:
        """Hash more bytes (the GIL is released while OpenSSL works on a large block)."""
        if not data:
            return
        if isinstance(data, bytearray):
            pointer: object = (ctypes.c_char * len(data)).from_buffer(data)
        elif isinstance(data, bytes):
            pointer = data  # ctypes passes a pointer to the bytes' own buffer
        else:
            data = pointer = bytes(data)
        library = _libcrypto() if len(data) >= GIL_RELEASE_SIZE else _libcrypto_holding_the_gil()
        library.SHA256_Update(self._ctx, pointer, len(data))

    def copy(self) -> ResumableSha256:
        """An independent hash of the same bytes."""
        twin = ResumableSha256.__new__(ResumableSha256)
        twin._ctx = ctypes.create_string_buffer(self._ctx.raw, _CTX_SIZE)
        return twin

    def digest(self) -> bytes:
        """The SHA-256 of the bytes so far (the hash can go on afterwards)."""
        out = ctypes.create_string_buffer(32)
        _libcrypto_holding_the_gil().SHA256_Final(out, self.copy()._ctx)
        return out.raw

    def hexdigest(self) -> str:
        """:meth:`digest` in hex."""
        return self.digest().hex()

    @property
    def hashed_bytes(self) -> int:
        """How many bytes went in (from the context's bit count)."""
        low, high = struct.unpack_from("=II", self._ctx.raw, 32)
        return int(((high << 32) | low) // 8)

    def state(self) -> bytes:
        """The saved state: resumable by any process on a machine of the same byte order."""
        return _STATE_VERSION + self._ctx.raw

    @classmethod
    def resume(cls, state: bytes | None, offset: int) -> ResumableSha256 | None:
        """The hash of ``[0, offset)`` from a saved state, or ``None`` if ``state`` is missing,
        of another layout, or was saved at another offset."""
        if offset == 0:
            return cls()
        if state is None or len(state) != len(_STATE_VERSION) + _CTX_SIZE:
            return None
        if not state.startswith(_STATE_VERSION):
            return None
        resumed = cls.__new__(cls)
        resumed._ctx = ctypes.create_string_buffer(state[len(_STATE_VERSION) :], _CTX_SIZE)
        return resumed if resumed.hashed_bytes == offset else None
