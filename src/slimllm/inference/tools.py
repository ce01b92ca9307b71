"""Tool calling: how a model is told about tools, how its calls are read back, and the grammar
that makes `tool_choice: required` (or a named function) a call whatever the model.

A model family writes its calls in its own way, which its chat template shows:
- hermes: `<tool_call>{"name": ..., "arguments": {...}}</tool_call>` (Qwen 2/2.5/3, Hermes, many
  fine-tunes);
- llama3: a bare `{"name": ..., "parameters": {...}}` object, optionally after `<|python_tag|>`
  (Llama 3.1-3.3);
- mistral: `[TOOL_CALLS][{"name": ..., "arguments": {...}}, ...]`.
A template that knows tools (it reads the `tools` variable) renders them itself, as Hugging Face's
`apply_chat_template` does; for one that does not, the tools and the hermes format are described
in the system message (as llama-server's generic handler does), and hermes calls are read back.
"""

from __future__ import annotations

import json
import re
import uuid
from dataclasses import dataclass
from typing import Any

from slimllm.inference.structured import SchemaError, wrapped_grammar

HERMES, LLAMA3, MISTRAL, GENERIC = "hermes", "llama3", "mistral", "generic"
# Where a call starts, per format; llama3's bare object starts at its first `{`.
_OPENERS = {
    HERMES: ("<tool_call>",),
    GENERIC: ("<tool_call>",),
    MISTRAL: ("[TOOL_CALLS]",),
    LLAMA3: ("<|python_tag|>", "{"),
}
MAX_PARALLEL_CALLS = 8
# The markers of every format, as the answer's text must carry them.
MARKERS = ("<tool_call>", "</tool_call>", "[TOOL_CALLS]", "[ARGS]", "<|python_tag|>")


def detect(template: str) -> str:
    """The call format a chat template's model family writes."""
    if "tools" not in template:
        return GENERIC
    if "<tool_call>" in template:
        return HERMES
    if "[TOOL_CALLS]" in template:
        return MISTRAL
    if "<|start_header_id|>" in template or "<|python_tag|>" in template:
        return LLAMA3
    return GENERIC


@dataclass(frozen=True)
class ToolCall:
    name: str
    arguments: str  # JSON text, as OpenAI sends it
    id: str

    def openai(self, index: int | None = None) -> dict[str, Any]:
        out: dict[str, Any] = {
            "id": self.id,
            "type": "function",
            "function": {"name": self.name, "arguments": self.arguments},
        }
        return out if index is None else {"index": index, **out}


def _call_id() -> str:
    return f"call_{uuid.uuid4().hex[:24]}"


def generic_system_prompt(tools: list[dict[str, Any]]) -> str:
    listed = "\n".join(json.dumps(t["function"], ensure_ascii=False) for t in tools)
    return (
        "You can call functions. To call one, answer with only\n"
        '<tool_call>{"name": <function name>, "arguments": <arguments as a JSON object>}</tool_call>\n'
        "and nothing else. The functions:\n" + listed
    )


def history_for_template(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Messages as Hugging Face templates read them: a call's `arguments` as an object (OpenAI
    sends a JSON string; templates write it with `tojson`), `tool` messages as they came."""
    out = []
    for message in messages:
        calls = message.get("tool_calls")
        if calls:
            fixed = []
            for call in calls:
                function = dict(call.get("function") or {})
                arguments = function.get("arguments")
                function["arguments"] = _as_object(arguments)
                fixed.append({**call, "function": function, **function})
            message = {**message, "tool_calls": fixed}
        out.append(message)
    return out


def history_as_text(messages: list[dict[str, Any]]) -> list[dict[str, str]]:
    """Messages for a template that knows neither tools nor tool calls: calls written as the
    hermes text the model was told to write, tool results as the tool's turn."""
    out: list[dict[str, str]] = []
    for message in messages:
        content = message.get("content") or ""
        calls = message.get("tool_calls") or []
        if calls:
            written = [
                "<tool_call>"
                + json.dumps(
                    {"name": c["function"]["name"], "arguments": _as_object(c["function"].get("arguments"))},
                    ensure_ascii=False,
                )
                + "</tool_call>"
                for c in calls
            ]
            content = "\n".join(filter(None, [content, *written]))
        out.append({"role": message["role"], "content": content})
    return out


def _as_object(arguments: Any) -> Any:
    if isinstance(arguments, str):
        try:
            return json.loads(arguments)
        except ValueError:
            return arguments
    return arguments


# -- reading calls back ----------------------------------------------------------------------

_HERMES_CALL = re.compile(r"<tool_call>\s*(.*?)\s*(?:</tool_call>|$)", re.DOTALL)


def _call_from(obj: Any) -> ToolCall | None:
    if not isinstance(obj, dict) or not isinstance(obj.get("name"), str):
        return None
    arguments = obj.get("arguments", obj.get("parameters", {}))
    if isinstance(arguments, str):
        try:
            arguments = json.loads(arguments)
        except ValueError:
            return None
    return ToolCall(obj["name"], json.dumps(arguments, ensure_ascii=False), _call_id())


def _objects(text: str) -> list[Any]:
    """JSON values written one after another (separated by whitespace, `;` or `,`)."""
    decoder = json.JSONDecoder()
    values: list[Any] = []
    i = 0
    while i < len(text):
        while i < len(text) and text[i] in " \t\r\n;,":
            i += 1
        if i >= len(text):
            break
        try:
            value, i = decoder.raw_decode(text, i)
        except ValueError:
            return values
        values.append(value)
    return values


def parse(text: str, fmt: str) -> tuple[str | None, list[ToolCall]]:
    """(content, calls) of a model's answer. Text that only looks like a call stays content."""
    if fmt in (HERMES, GENERIC):
        calls: list[ToolCall] = []
        matches = list(_HERMES_CALL.finditer(text))
        for i, match in enumerate(matches):
            values = _objects(match.group(1))
            call = _call_from(values[0]) if values else None
            if call is None:
                if calls and i == len(matches) - 1 and not match.group(0).endswith("</tool_call>"):
                    break  # a last call cut off by max_tokens: the complete ones stand
                return text, []
            calls.append(call)
        if not calls:
            return text, []
        rest = _HERMES_CALL.sub("", text).strip()
        return rest or None, calls
    if fmt == MISTRAL:
        head, marker, tail = text.partition("[TOOL_CALLS]")
        if not marker:
            return text, []
        values = _objects(tail)
        found = values[0] if len(values) == 1 and isinstance(values[0], list) else values
        calls = _all_calls(found)
        return (head.strip() or None, calls) if calls else (text, [])
    # llama3
    body = text.strip()
    body = body.removeprefix("<|python_tag|>").strip()
    if not body.startswith("{"):
        return text, []
    calls = _all_calls(_objects(body))
    return (None, calls) if calls else (text, [])


def _all_calls(values: list[Any]) -> list[ToolCall]:
    """The calls, or none at all when any value is not a call."""
    calls = [_call_from(v) for v in values]
    return [c for c in calls if c is not None] if calls and None not in calls else []


class StreamSplitter:
    """Streams the content of an answer while holding back what may be a tool call.

    Text is passed on as soon as it cannot be the start of a call; from the start of a call on,
    everything is kept and read as calls at the end (`finish`).
    """

    def __init__(self, fmt: str) -> None:
        self.fmt = fmt
        self.openers = _OPENERS[fmt]
        self.held = ""
        self.emitted = ""
        self.in_call = False

    def feed(self, text: str) -> str:
        if self.in_call:
            self.held += text
            return ""
        self.held += text
        if self.fmt == LLAMA3 and self.emitted.strip():
            # A bare JSON call is the whole answer; after other text, it is text.
            out, self.held = self.held, ""
            self.emitted += out
            return out
        for opener in self.openers:
            at = self.held.find(opener)
            if at >= 0 and (self.fmt != LLAMA3 or not self.held[:at].strip()):
                out, self.held = self.held[:at], self.held[at:]
                self.in_call = True
                self.emitted += out
                return out
        keep = 0
        for opener in self.openers:
            for k in range(min(len(opener) - 1, len(self.held)), 0, -1):
                if self.held.endswith(opener[:k]):
                    keep = max(keep, k)
                    break
        if self.fmt == LLAMA3 and not (self.emitted + self.held[: len(self.held) - keep]).strip():
            keep = len(self.held)  # only whitespace so far: the call may still come
        out = self.held[: len(self.held) - keep]
        self.held = self.held[len(out) :]
        self.emitted += out
        return out

    def finish(self) -> tuple[str, list[ToolCall]]:
        """(content still to send, calls)."""
        held, self.held = self.held, ""
        if not self.in_call:
            return held, []
        content, calls = parse(held, self.fmt)
        if not calls:
            return held, []
        return content or "", calls


# -- forcing a call --------------------------------------------------------------------------


def call_grammar(tools: list[dict[str, Any]], fmt: str, *, parallel: bool) -> str:
    """A grammar whose sentences are one call (or, with `parallel`, several) of one of `tools`
    in the model's own format."""
    key = "parameters" if fmt == LLAMA3 else "arguments"
    schemas: list[tuple[str, dict[str, Any], str]] = []
    for i, tool in enumerate(tools):
        function = tool["function"]
        parameters = function.get("parameters") or {"type": "object"}
        schemas.append(
            (
                f"call{i}",
                {
                    "type": "object",
                    "properties": {"name": {"const": function["name"]}, key: parameters},
                    "required": ["name", key],
                },
                f"tool {json.dumps(function['name'])} #/call",
            )
        )
    one = "( " + " | ".join(name for name, _, _ in schemas) + " )"
    more = MAX_PARALLEL_CALLS - 1 if parallel else 0
    if fmt == MISTRAL:
        repeat = f' ( "," space {one} ){{0,{more}}}' if more else ""
        root = f'"[TOOL_CALLS]" "[" space {one}{repeat} "]"'
    elif fmt == LLAMA3:
        root = f'{one} ( ";" space {one} ){{0,{more}}}' if more else one
    else:
        wrapped = f'"<tool_call>" "\\n"? space {one} "\\n"? "</tool_call>"'
        root = f'{wrapped} ( "\\n" {wrapped} ){{0,{more}}}' if more else wrapped
    try:
        return wrapped_grammar(schemas, root)
    except SchemaError as exc:
        # Places in the call's schema are the tool's parameters' places in the request.
        raise SchemaError(str(exc).replace(f"#/call/properties/{key}", "#/parameters")) from None
