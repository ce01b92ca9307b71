"""Turn OpenAI chat messages into a prompt.

Two renderers, chosen once at start:
- a Jinja chat template (from the GGUF's `tokenizer.chat_template`, or a file given by the user),
  rendered in a sandbox with the conventions Hugging Face templates expect (`bos_token`,
  `eos_token`, `add_generation_prompt`, `raise_exception`, `tojson`, `strftime_now`), as
  llama-cpp-python's Jinja2ChatFormatter does;
- one of llama.cpp's built-in templates by name (`gemma`, `chatml`, `llama3`, `phi3`, ...), applied
  by `llama_chat_apply_template`, which is what llama-server uses without `--jinja`.
"""

from __future__ import annotations

import ctypes
import json
import threading
import time
import types
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

import jinja2
import jinja2.ext
from jinja2.sandbox import ImmutableSandboxedEnvironment

from slimllm.clitypes import TEMPLATE_TIMEOUT

Message = dict[str, Any]


class TemplateError(ValueError):
    """The messages cannot be rendered with this template (a client error)."""

    code = "invalid_value"


class TemplateTimeout(TemplateError):
    """The template took longer than its time budget to render (a loop in the template)."""

    code = "template_timeout"


class _Overtime(BaseException):
    """Raised in the rendering thread past its deadline. A BaseException, so that no `except
    Exception` on the way (Jinja's own) takes it for an error of the template."""


# PyThreadState_SetAsyncExc(thread id, exception type or NULL): the exception is raised in that
# thread at its next bytecode boundary, so even a tight loop of template code stops.
_set_async_exc = ctypes.pythonapi.PyThreadState_SetAsyncExc
_set_async_exc.argtypes = (ctypes.c_ulong, ctypes.py_object)


class _Watchdog:
    """One thread that raises _Overtime in rendering threads past their deadlines.

    A render registers its thread's deadline and removes it when done (a few microseconds; a
    timer thread per render cost ~0.3 ms). Once a render has ended, the exception is never
    raised in its thread, and one raised too late to land in it is withdrawn.
    """

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._deadlines: dict[int, float] = {}  # thread id -> deadline (time.monotonic)
        self._fired: set[int] = set()
        self._thread: threading.Thread | None = None

    @contextmanager
    def budget(self, seconds: float) -> Iterator[None]:
        thread = threading.get_ident()
        with self._cond:
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="template-watchdog", daemon=True)
                self._thread.start()
            deadline = time.monotonic() + seconds
            if not self._deadlines or deadline < min(self._deadlines.values()):
                self._cond.notify()
            self._deadlines[thread] = deadline
        try:
            yield
        finally:
            with self._cond:
                self._deadlines.pop(thread, None)
                if thread in self._fired:
                    self._fired.discard(thread)
                    _set_async_exc(thread, ctypes.py_object())  # NULL: clears a pending one

    def _run(self) -> None:
        with self._cond:
            while True:
                now = time.monotonic()
                for thread, deadline in list(self._deadlines.items()):
                    if deadline <= now:
                        del self._deadlines[thread]
                        self._fired.add(thread)
                        _set_async_exc(thread, _Overtime)
                soonest = min(self._deadlines.values(), default=None)
                self._cond.wait(None if soonest is None else max(0.0, soonest - now))


_WATCHDOG = _Watchdog()


class ChatRenderer(Protocol):
    description: str
    # The Jinja source, or the built-in template's name: what `/props` shows as `chat_template`.
    template: str

    def render(self, messages: list[Message], tools: list[dict[str, Any]] | None = None) -> str: ...


def builtin_template_names(lib: types.ModuleType) -> list[str]:
    count = lib.llama_chat_builtin_templates(None, 0)
    names = (ctypes.c_char_p * count)()
    lib.llama_chat_builtin_templates(names, count)
    return sorted(name.decode() for name in names if name)


@dataclass
class JinjaChatTemplate:
    source: str
    bos_token: str
    eos_token: str
    origin: str
    # Seconds one render may take (--template-timeout): a template is code from the GGUF, and a
    # loop in it would hold a text thread for as long as it runs.
    time_budget: float = TEMPLATE_TIMEOUT

    def __post_init__(self) -> None:
        env = ImmutableSandboxedEnvironment(
            trim_blocks=True, lstrip_blocks=True, extensions=[jinja2.ext.loopcontrols]
        )
        env.filters["tojson"] = _tojson
        env.globals["raise_exception"] = _raise_exception
        env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
        try:
            self._template = env.from_string(self.source)
        except jinja2.TemplateSyntaxError as exc:
            raise ValueError(f"chat template from {self.origin} is not valid Jinja: {exc}") from None
        self.description = f"Jinja template ({self.origin})"
        self.template = self.source

    def render(self, messages: list[Message], tools: list[dict[str, Any]] | None = None) -> str:
        try:
            with _WATCHDOG.budget(self.time_budget):
                return self._template.render(
                    messages=messages,
                    tools=tools,
                    bos_token=self.bos_token,
                    eos_token=self.eos_token,
                    add_generation_prompt=True,
                )
        except _Overtime:
            raise TemplateTimeout(
                f"the chat template did not finish rendering these messages within "
                f"{self.time_budget:g} s (the server's --template-timeout)"
            ) from None
        except TemplateError:
            raise
        except jinja2.TemplateError as exc:
            raise TemplateError(f"the chat template rejected the messages: {exc}") from None
        except RecursionError:
            raise TemplateError("the chat template recursed too deeply on these messages") from None
        except (ArithmeticError, LookupError, TypeError, ValueError) as exc:
            # The template's own code failing on these messages (1/0, a missing key, ...).
            raise TemplateError(f"the chat template failed on these messages: {exc!r}") from None


@dataclass
class BuiltinChatTemplate:
    """A llama.cpp built-in template, by name or recognised from the template text."""

    lib: types.ModuleType
    name: str
    origin: str

    def __post_init__(self) -> None:
        self.description = f"llama.cpp built-in template '{self.name}' ({self.origin})"
        self.template = self.name
        # Fail at start, not on the first request, if llama.cpp does not know this template.
        self.render([{"role": "user", "content": "hi"}])

    def render(self, messages: list[Message], tools: list[dict[str, Any]] | None = None) -> str:
        # llama.cpp's built-in templates know no tools: the caller describes them in a message.
        keep = [(str(m["role"]).encode(), str(m.get("content") or "").encode()) for m in messages]
        chat = (self.lib.llama_chat_message * len(keep))()
        for slot, (role, content) in zip(chat, keep, strict=True):
            slot.role = role
            slot.content = content
        size = max(1024, 2 * sum(len(c) + len(r) + 32 for r, c in keep))
        for _ in range(2):
            buf = ctypes.create_string_buffer(size)
            n = self.lib.llama_chat_apply_template(self.name.encode(), chat, len(keep), True, buf, size)
            if n < 0:
                raise ValueError(f"llama.cpp does not know the chat template '{self.name}'")
            if n <= size:
                return buf.raw[:n].decode("utf-8", errors="replace")
            size = n + 1
        raise TemplateError("the chat template output kept growing")  # pragma: no cover


def _tojson(value: Any, ensure_ascii: bool = False, indent: int | None = None, **kwargs: Any) -> str:
    return json.dumps(
        value, ensure_ascii=ensure_ascii, indent=indent, sort_keys=kwargs.get("sort_keys", False)
    )


def _raise_exception(message: str) -> None:
    raise TemplateError(f"the chat template rejected the messages: {message}")
