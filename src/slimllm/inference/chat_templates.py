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
import types
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

import jinja2
import jinja2.ext
from jinja2.sandbox import ImmutableSandboxedEnvironment

Message = dict[str, Any]


class TemplateError(ValueError):
    """The messages cannot be rendered with this template (a client error)."""


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
            return self._template.render(
                messages=messages,
                tools=tools,
                bos_token=self.bos_token,
                eos_token=self.eos_token,
                add_generation_prompt=True,
            )
        except TemplateError:
            raise
        except jinja2.TemplateError as exc:
            raise TemplateError(f"the chat template rejected the messages: {exc}") from None


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
