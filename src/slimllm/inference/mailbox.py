"""Hand events from the engine's thread to the event loop without giving the GIL away.

`loop.call_soon_threadsafe` wakes the loop with a socket send, and CPython releases the GIL around
that send. The loop, woken, takes the GIL and does its per-token work (JSON, SSE framing, the
socket write) while the engine thread, back from the send, waits for the GIL before it can start
the next llama_decode. On 2 cores that stall measured 0.4-0.6 ms a token, 2-3 % of a decode step.

Here the wakeup is a byte written to a pipe through a foreign call that keeps the GIL
(`ctypes.PyDLL`): the loop wakes, waits for the GIL, and gets it once the engine thread is inside
llama_decode, which releases it for the whole computation.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import ctypes
import os
from collections.abc import Callable
from typing import Any

try:
    _write_keeping_gil: Any = ctypes.PyDLL(None).write
    _write_keeping_gil.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_size_t]
    _write_keeping_gil.restype = ctypes.c_ssize_t
except (OSError, AttributeError):  # no C library to call: the plain write still works, only slower
    _write_keeping_gil = None


class Mailbox:
    """Calls `callback(item)` on the loop's thread for every `post(callback, item)`, in order."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._items: collections.deque[tuple[Callable[[Any], None], Any]] = collections.deque()
        self._closed = False
        self._read_fd, self._write_fd = os.pipe()
        os.set_blocking(self._read_fd, False)
        # A full pipe means the loop already has a wakeup pending; the write may then fail.
        os.set_blocking(self._write_fd, False)
        loop.add_reader(self._read_fd, self._drain)

    def post(self, callback: Callable[[Any], None], item: Any) -> None:
        """Any thread: queue the call and wake the loop. After close() it does nothing."""
        if self._closed:  # an engine still finishing a step while the server shuts down
            return
        self._items.append((callback, item))  # deque appends are atomic
        if _write_keeping_gil is not None:
            _write_keeping_gil(self._write_fd, b"\0", 1)
        else:
            with contextlib.suppress(BlockingIOError):
                os.write(self._write_fd, b"\0")

    def _drain(self) -> None:
        with contextlib.suppress(BlockingIOError):
            while os.read(self._read_fd, 4096):
                pass
        # Read the pipe first: an item posted after this point also writes a new wakeup.
        while self._items:
            callback, item = self._items.popleft()
            callback(item)

    def close(self) -> None:
        self._closed = True
        self._loop.remove_reader(self._read_fd)
        os.close(self._read_fd)
        os.close(self._write_fd)
