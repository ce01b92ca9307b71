"""Reading tool calls back out of a model's answer, whole and streamed, in each family's format
(slimllm.inference.tools). The servers' behaviour with real templates and models is in
tests/test_api_parity.py; these cases cover the texts a model may write around its calls."""

from __future__ import annotations

import json

import pytest

from slimllm.inference import tools

W = '{"name": "get_weather", "arguments": {"city": "Paris"}}'
T = '{"name": "get_time", "arguments": {"zone": "UTC"}}'

CASES = [
    pytest.param("hermes", f"<tool_call>\n{W}\n</tool_call>", None, ["get_weather"], id="hermes-one"),
    pytest.param(
        "hermes",
        f"Let me look.\n<tool_call>\n{W}\n</tool_call>\n<tool_call>\n{T}\n</tool_call>",
        "Let me look.",
        ["get_weather", "get_time"],
        id="hermes-text-then-two",
    ),
    pytest.param("hermes", f"<tool_call>\n{W}", None, ["get_weather"], id="hermes-unclosed-at-end"),
    pytest.param(
        "hermes",
        f'<tool_call>\n{W}\n</tool_call>\n<tool_call>\n{{"name": "get_ti',
        None,
        ["get_weather"],
        id="hermes-last-cut-off",
    ),
    pytest.param(
        "hermes",
        "<tool_call>\nnot json\n</tool_call>",
        "<tool_call>\nnot json\n</tool_call>",
        [],
        id="hermes-bad",
    ),
    pytest.param("hermes", "The answer is 4.", "The answer is 4.", [], id="hermes-plain"),
    pytest.param("generic", f"<tool_call>{W}</tool_call>", None, ["get_weather"], id="generic"),
    pytest.param("mistral", f"[TOOL_CALLS][{W}, {T}]", None, ["get_weather", "get_time"], id="mistral-list"),
    pytest.param("mistral", f"[TOOL_CALLS]{W}", None, ["get_weather"], id="mistral-bare-object"),
    pytest.param("mistral", "[TOOL_CALLS][{]", "[TOOL_CALLS][{]", [], id="mistral-bad"),
    pytest.param(
        "llama3",
        '{"name": "get_weather", "parameters": {"city": "Paris"}}',
        None,
        ["get_weather"],
        id="llama3-parameters",
    ),
    pytest.param(
        "llama3",
        '<|python_tag|>{"name": "get_weather", "parameters": {"city": "Paris"}}; '
        '{"name": "get_time", "parameters": {}}',
        None,
        ["get_weather", "get_time"],
        id="llama3-python-tag-two",
    ),
    pytest.param(
        "llama3", 'I think {"name": "x"} is odd.', 'I think {"name": "x"} is odd.', [], id="llama3-text"
    ),
    pytest.param("llama3", '{"colour": "red"}', '{"colour": "red"}', [], id="llama3-json-not-a-call"),
]


@pytest.mark.parametrize(("fmt", "text", "content", "names"), CASES)
def test_parse(fmt: str, text: str, content: str | None, names: list[str]) -> None:
    got_content, calls = tools.parse(text, fmt)
    assert got_content == content
    assert [c.name for c in calls] == names
    for call in calls:
        assert isinstance(json.loads(call.arguments), dict)
        assert call.id.startswith("call_")


@pytest.mark.parametrize(("fmt", "text", "content", "names"), CASES)
@pytest.mark.parametrize("piece", [1, 3, 1000], ids=["by-char", "by-3", "whole"])
def test_streamed_as_parsed(fmt: str, text: str, content: str | None, names: list[str], piece: int) -> None:
    """Streamed in pieces, the content sent and the calls at the end are what parse gives."""
    splitter = tools.StreamSplitter(fmt)
    sent = "".join(splitter.feed(text[i : i + piece]) for i in range(0, len(text), piece))
    rest, calls = splitter.finish()
    sent += rest
    assert [c.name for c in calls] == names
    if names:
        assert sent.strip() == (content or "")
    else:
        assert sent == text  # nothing held back is lost


def test_detect() -> None:
    assert tools.detect("{{ messages }}") == tools.GENERIC
    assert tools.detect("{% if tools %}<tool_call>{% endif %}") == tools.HERMES
    assert tools.detect("{% if tools %}[TOOL_CALLS]{% endif %}") == tools.MISTRAL
    assert tools.detect("{% if tools %}<|start_header_id|>{% endif %}") == tools.LLAMA3
