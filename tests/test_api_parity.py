"""OpenAI API parity with llama-server, tried with the official `openai` client on the real
images: structured outputs, tools, logprobs, embeddings and prompt-prefix reuse.

The servers: Gemma 3 270M (the real model, two slots so batch invariance is on, embeddings on),
the generated GGUFs whose templates call tools in the three common formats (tests/ggufs.py:
qwen25 hermes `<tool_call>`, llama31 bare JSON, mistral `[TOOL_CALLS]`) and a generated ChatML
model whose template knows no tools (the generic format), and the chat gateway in front of Gemma.
The generated models' weights are noise, so any valid JSON or call they write is the grammar's
doing.
"""

from __future__ import annotations

import base64
import functools
import json
import math
import struct
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import httpx
import jsonschema
import pytest
from openai import BadRequestError, OpenAI
from pydantic import BaseModel, Field

from tests.dockerutil import published_port, wait_for_http
from tests.ggufs import TOOL_FORMATS, TOOL_KINDS, write_models
from tests.test_chat import (
    CHAT_IMAGE,
    chat_image,  # noqa: F401  (the chat image, built once)
)
from tests.test_inference import IMAGE as INFERENCE_IMAGE
from tests.test_inference import inference_image  # noqa: F401  (the inference image, built once)

pytestmark = [pytest.mark.docker, pytest.mark.model, pytest.mark.slow]

RUN_ID = uuid.uuid4().hex[:6]
GATEWAY_KEY = f"gw-{uuid.uuid4().hex}"

# A schema with what extraction asks for: nested objects, arrays, enums, required and optional
# fields, numbers, booleans, bounded strings (unbounded strings and numbers are valid too, but a
# model of noise would fill max_tokens with one).
PERSON = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 12},
        "age": {"type": "integer"},
        "member": {"type": "boolean"},
        "colours": {
            "type": "array",
            "items": {"type": "string", "enum": ["red", "green", "blue"]},
            "minItems": 1,
            "maxItems": 3,
        },
        "address": {
            "type": "object",
            "properties": {
                "city": {"type": "string", "enum": ["Paris", "Rome", "Oslo"]},
                "zip": {"type": "string", "pattern": "^[0-9]{5}$"},
            },
            "required": ["city", "zip"],
            "additionalProperties": False,
        },
        "nickname": {"anyOf": [{"type": "string", "maxLength": 8}, {"type": "null"}]},
    },
    "required": ["name", "age", "member", "colours", "address"],
    "additionalProperties": False,
}
WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The weather in a city",
        "parameters": {
            "type": "object",
            "properties": {
                "city": {"type": "string", "enum": ["Paris", "Rome", "Oslo"]},
                "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
                "days": {"type": "integer"},
            },
            "required": ["city", "unit"],
            "additionalProperties": False,
        },
    },
}
CLOCK = {
    "type": "function",
    "function": {
        "name": "get_time",
        "description": "The time in a time zone",
        "parameters": {
            "type": "object",
            "properties": {"zone": {"type": "string", "enum": ["UTC", "CET"]}},
            "required": ["zone"],
        },
    },
}
TOOLS = [WEATHER, CLOCK]
PARAMETERS = {t["function"]["name"]: t["function"]["parameters"] for t in TOOLS}
ASK = [{"role": "user", "content": "What is the weather in Paris?"}]


@dataclass
class Server:
    container: Any
    url: str

    def client(self, key: str = "none") -> OpenAI:
        return OpenAI(base_url=self.url + "/v1", api_key=key, max_retries=0, timeout=300)

    @functools.cached_property
    def model(self) -> str:
        return str(httpx.get(self.url + "/v1/models", timeout=10).json()["data"][0]["id"])

    def metric(self, name: str) -> float:
        for line in httpx.get(self.url + "/metrics", timeout=10).text.splitlines():
            if line.startswith(name + " "):
                return float(line.rsplit(" ", 1)[1])
        raise AssertionError(f"metric {name} not found")


@dataclass
class Servers:
    gemma: Server
    by_kind: dict[str, Server]  # the generated models: the tool kinds and "generic"
    gateway: Server


@pytest.fixture(scope="module")
def servers(
    docker_client: Any,
    inference_image: Any,  # noqa: F811
    chat_image: Any,  # noqa: F811
    default_model: Path,
    models_cache_dir: Path,
    generated_models: dict[str, Path],
) -> Iterator[Servers]:
    network = docker_client.networks.create(f"slimllm-parity-{RUN_ID}")
    containers: list[Any] = []
    tool_models = write_models(models_cache_dir / "generated", TOOL_KINDS)

    def run(image: str, role: str, port: str, env: dict[str, str], **kwargs: Any) -> Server:
        container = docker_client.containers.run(
            image,
            detach=True,
            name=f"slimllm-parity-{RUN_ID}-{role}",
            network=network.name,
            ports={port: ("127.0.0.1", None)},
            read_only=True,
            tmpfs={"/tmp": ""},
            environment=env,
            **kwargs,
        )
        containers.append(container)
        return Server(container, f"http://127.0.0.1:{published_port(container, port)}")

    def generated(role: str, path: Path) -> Server:
        return run(
            INFERENCE_IMAGE,
            role,
            "8080/tcp",
            {"SLIMLLM_MODEL": f"/models/{path.name}", "SLIMLLM_THREADS": "1", "SLIMLLM_CTX_SIZE": "2048"},
            volumes={str(path.parent): {"bind": "/models", "mode": "ro"}},
        )

    try:
        gemma = run(
            INFERENCE_IMAGE,
            "gemma",
            "8080/tcp",
            {
                "SLIMLLM_THREADS": "2",
                "SLIMLLM_SLOTS": "2",
                "SLIMLLM_CTX_SIZE": "2048",
                "SLIMLLM_EMBEDDINGS": "1",
            },
            volumes={str(default_model.parent): {"bind": "/models", "mode": "ro"}},
        )
        by_kind = {kind: generated(kind, path) for kind, path in tool_models.items()}
        by_kind["generic"] = generated("generic", generated_models["chatml"])
        gateway = run(
            CHAT_IMAGE,
            "gateway",
            "8000/tcp",
            {
                "SLIMLLM_CHAT_MODELS": f"gemma=http://slimllm-parity-{RUN_ID}-gemma:8080",
                "SLIMLLM_CHAT_API_KEY": GATEWAY_KEY,
                "SLIMLLM_CHAT_POLL_INTERVAL": "1",
            },
        )
        for server in [gemma, *by_kind.values()]:
            wait_for_http(server.url + "/health", timeout=180)
        wait_for_http(gateway.url + "/health", timeout=60)
        deadline = time.monotonic() + 60
        while httpx.get(gateway.url + "/health").json()["models"]["gemma"] != "up":
            assert time.monotonic() < deadline, "the gateway never saw its backend"
            time.sleep(0.5)
        yield Servers(gemma, by_kind, gateway)
    finally:
        for container in containers:
            print(f"--- {container.name}\n{container.logs(tail=30).decode(errors='replace')}")
            container.remove(force=True)
        network.remove()


MODEL_IDS = ["gemma", *sorted(TOOL_KINDS), "generic"]


def served(servers: Servers, model: str) -> Server:
    return servers.gemma if model == "gemma" else servers.by_kind[model]


def streamed(client: OpenAI, model: str, **request: Any) -> tuple[str, list[Any], str, list[Any]]:
    """(content, tool call deltas, finish reason, logprob entries) of a streamed chat completion."""
    content, calls, logprobs, finish = "", [], [], ""
    for chunk in client.chat.completions.create(stream=True, model=model, **request):
        if not chunk.choices:
            continue
        choice = chunk.choices[0]
        content += choice.delta.content or ""
        calls += choice.delta.tool_calls or []
        if choice.logprobs and choice.logprobs.content:
            logprobs += choice.logprobs.content
        finish = choice.finish_reason or finish
    return content, calls, finish, logprobs


# -- structured outputs ----------------------------------------------------------------------


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "streamed"])
@pytest.mark.parametrize("model", MODEL_IDS)
def test_json_schema_output_validates(servers: Servers, model: str, stream: bool) -> None:
    server = served(servers, model)
    client = server.client()
    request: dict[str, Any] = {
        "messages": [{"role": "user", "content": "Describe a person as JSON."}],
        "response_format": {"type": "json_schema", "json_schema": {"name": "person", "schema": PERSON}},
        "max_tokens": 400,
        "temperature": 0.7,
        "seed": 7,
    }
    if stream:
        text, _, finish, _ = streamed(client, server.model, **request)
    else:
        answer = client.chat.completions.create(model=server.model, **request)
        text, finish = answer.choices[0].message.content or "", answer.choices[0].finish_reason
    assert finish == "stop", (finish, text)
    jsonschema.validate(json.loads(text), PERSON)


class Colour(BaseModel):
    name: Literal["red", "green", "blue"]
    warm: bool
    shades: list[Literal["light", "dark"]] = Field(max_length=2)


class Palette(BaseModel):
    title: str = Field(max_length=10)
    colours: list[Colour] = Field(min_length=1, max_length=2)


@pytest.mark.parametrize("model", ["gemma", "qwen25"])
def test_openai_parse_with_a_pydantic_model(servers: Servers, model: str) -> None:
    server = served(servers, model)
    answer = server.client().chat.completions.parse(
        model=server.model,
        messages=[{"role": "user", "content": "A palette of two colours."}],
        response_format=Palette,
        max_tokens=300,
        temperature=0,
    )
    palette = answer.choices[0].message.parsed
    assert isinstance(palette, Palette), answer.choices[0].message.content
    assert 1 <= len(palette.colours) <= 2


@pytest.mark.parametrize("endpoint", ["chat", "completions"])
def test_json_object_mode(servers: Servers, endpoint: str) -> None:
    client = servers.by_kind["generic"].client()
    fmt = {"type": "json_object"}
    if endpoint == "chat":
        answer = client.chat.completions.create(
            model=servers.by_kind["generic"].model,
            messages=ASK,
            response_format=fmt,
            max_tokens=200,
            seed=3,  # type: ignore[arg-type]
        )
        text = answer.choices[0].message.content or ""
    else:
        done = client.completions.create(
            model=servers.by_kind["generic"].model,
            prompt="{",
            max_tokens=200,
            seed=3,
            extra_body={"response_format": fmt},
        )
        text = done.choices[0].text
    # Noise in a grammar of every JSON object may run out of tokens inside a string; when it
    # stops, it is an object.
    if json.loads(text) if text.endswith("}") else None:
        assert isinstance(json.loads(text), dict)
    assert text.startswith("{")


@pytest.mark.parametrize(
    ("schema", "keyword"),
    [
        pytest.param({"type": "integer", "minimum": 3}, "minimum", id="minimum"),
        pytest.param(
            {"type": "object", "patternProperties": {"^a": {}}}, "patternProperties", id="pattern-props"
        ),
        pytest.param({"type": "string", "format": "email"}, "email", id="format"),
        pytest.param({"type": "string", "maxLength": 10**9}, "maxLength", id="huge-bound"),
        pytest.param({"type": "string", "pattern": "^a{99999}$"}, "repeats", id="huge-pattern-repeat"),
        pytest.param({"$ref": "https://example.invalid/s.json"}, "local references", id="remote-ref"),
        pytest.param(
            {"type": "array", "items": {"type": "number", "multipleOf": 2}}, "multipleOf", id="nested"
        ),
    ],
)
def test_unsupported_schema_features_are_named(
    servers: Servers, schema: dict[str, Any], keyword: str
) -> None:
    with pytest.raises(BadRequestError) as caught:
        servers.gemma.client().chat.completions.create(
            model=servers.gemma.model,
            messages=ASK,
            response_format={"type": "json_schema", "json_schema": {"name": "x", "schema": schema}},
        )
    error = caught.value.body
    assert isinstance(error, dict) and keyword in error["message"], error
    assert error["param"] == "response_format.json_schema.schema"


# -- tools -----------------------------------------------------------------------------------


def check_calls(calls: list[Any], allowed: set[str]) -> None:
    assert calls, "no tool call"
    for call in calls:
        assert call.type == "function" and call.id
        assert call.function.name in allowed, call
        jsonschema.validate(json.loads(call.function.arguments), PARAMETERS[call.function.name])


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "streamed"])
@pytest.mark.parametrize("model", MODEL_IDS)
def test_tool_choice_required_gives_a_valid_call(servers: Servers, model: str, stream: bool) -> None:
    server = served(servers, model)
    client = server.client()
    request: dict[str, Any] = {
        "messages": ASK,
        "tools": TOOLS,
        "tool_choice": "required",
        "max_tokens": 200,
        "temperature": 0.7,
        "seed": 11,
    }
    if stream:
        content, deltas, finish, _ = streamed(client, server.model, **request)
        # Each call comes whole in one delta (its index, id, name and arguments).
        calls = deltas
    else:
        answer = client.chat.completions.create(model=server.model, **request)
        message = answer.choices[0].message
        content, calls, finish = (
            message.content or "",
            message.tool_calls or [],
            answer.choices[0].finish_reason,
        )
    assert finish == "tool_calls", (finish, content, calls)
    assert not content.strip(), content
    check_calls(calls, {"get_weather", "get_time"})


@pytest.mark.parametrize("model", ["gemma", "qwen25", "mistral", "llama31"])
def test_named_tool_choice_calls_that_tool(servers: Servers, model: str) -> None:
    server = served(servers, model)
    answer = server.client().chat.completions.create(
        model=server.model,
        messages=ASK,
        tools=TOOLS,  # type: ignore[arg-type]
        tool_choice={"type": "function", "function": {"name": "get_time"}},
        max_tokens=100,
        temperature=0,
    )
    calls = answer.choices[0].message.tool_calls or []
    check_calls(calls, {"get_time"})
    assert len(calls) == 1


def test_the_server_detects_each_family_s_call_format(servers: Servers) -> None:
    for kind, fmt in {**TOOL_FORMATS, "generic": "generic"}.items():
        props = httpx.get(servers.by_kind[kind].url + "/props", timeout=10).json()
        assert props["tool_call_format"] == fmt, (kind, props["tool_call_format"])


CALLED = '{"name": "get_weather", "arguments": {"city": "Paris", "unit": "celsius"}}'
HISTORY = [
    {"role": "user", "content": "What is the weather in Paris?"},
    {
        "role": "assistant",
        "content": None,
        "tool_calls": [
            {
                "id": "call_7",
                "type": "function",
                "function": {"name": "get_weather", "arguments": '{"city": "Paris", "unit": "celsius"}'},
            }
        ],
    },
    {"role": "tool", "tool_call_id": "call_7", "content": "sunny, 21 degrees"},
    {"role": "user", "content": "And tomorrow?"},
]


@pytest.mark.parametrize(
    ("model", "call", "result"),
    [
        pytest.param(
            "qwen25",
            f"<tool_call>\n{CALLED}\n</tool_call>",
            "<tool_response>\nsunny, 21 degrees\n</tool_response>",
            id="hermes",
        ),
        pytest.param(
            "llama31",
            '{"name": "get_weather", "parameters": {"city": "Paris", "unit": "celsius"}}<|eot_id|>',
            "<|start_header_id|>ipython<|end_header_id|>\n\nsunny, 21 degrees",
            id="llama3",
        ),
        pytest.param(
            "mistral",
            f'[TOOL_CALLS][{CALLED[:-1]}, "id": "call_7"}}]',
            '[TOOL_RESULTS]{"content": "sunny, 21 degrees", "call_id": "call_7"}[/TOOL_RESULTS]',
            id="mistral",
        ),
        pytest.param(
            "generic",
            f"<tool_call>{CALLED}</tool_call>",
            "<|im_start|>tool\nsunny, 21 degrees<|im_end|>",
            id="generic",
        ),
    ],
)
def test_tools_and_their_history_go_through_the_template(
    servers: Servers, model: str, call: str, result: str
) -> None:
    response = httpx.post(
        servers.by_kind[model].url + "/apply-template", json={"messages": HISTORY, "tools": TOOLS}, timeout=30
    )
    assert response.status_code == 200, response.text
    prompt = response.json()["prompt"]
    assert call in prompt and result in prompt, prompt
    assert '"get_time"' in prompt  # the tools are described
    answer = (
        servers.by_kind[model]
        .client()
        .chat.completions.create(
            model=servers.by_kind[model].model,
            messages=HISTORY,
            tools=TOOLS,
            max_tokens=4,  # type: ignore[arg-type]
        )
    )
    assert answer.usage is not None and answer.usage.prompt_tokens > 50


def test_tool_choice_errors_name_the_parameter(servers: Servers) -> None:
    client = servers.gemma.client()
    cases = [
        ({"tools": TOOLS, "tool_choice": {"type": "function", "function": {"name": "nope"}}}, "tool_choice"),
        ({"tool_choice": "required"}, "tool_choice"),
        ({"tools": [{"type": "function", "function": {"name": "bad name!"}}]}, "tools[0].function.name"),
    ]
    for extra, param in cases:
        with pytest.raises(BadRequestError) as caught:
            client.chat.completions.create(model=servers.gemma.model, messages=ASK, max_tokens=4, **extra)
        assert isinstance(caught.value.body, dict) and caught.value.body["param"] == param, caught.value.body


# -- logprobs --------------------------------------------------------------------------------


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "streamed"])
def test_chat_logprobs_at_temperature_zero(servers: Servers, stream: bool) -> None:
    client = servers.gemma.client()
    request: dict[str, Any] = {
        "messages": [{"role": "user", "content": "Name three colours."}],
        "max_tokens": 12,
        "temperature": 0,
        "logprobs": True,
        "top_logprobs": 5,
    }
    if stream:
        text, _, _, entries = streamed(client, servers.gemma.model, **request)
    else:
        answer = client.chat.completions.create(model=servers.gemma.model, **request)
        choice = answer.choices[0]
        assert choice.logprobs is not None and choice.logprobs.content is not None
        text, entries = choice.message.content or "", choice.logprobs.content
    assert len(entries) == 12
    assert "".join(e.token for e in entries) == text
    for entry in entries:
        assert entry.logprob <= 0
        assert len(entry.top_logprobs) == 5
        best = entry.top_logprobs[0]
        assert best.token == entry.token and math.isclose(best.logprob, entry.logprob, abs_tol=1e-6)
        ranks = [t.logprob for t in entry.top_logprobs]
        assert ranks == sorted(ranks, reverse=True)
        assert sum(math.exp(v) for v in ranks) <= 1 + 1e-4
        assert bytes(entry.bytes or []).decode("utf-8", errors="replace") == entry.token or entry.bytes


def test_completion_logprobs(servers: Servers) -> None:
    done = servers.gemma.client().completions.create(
        model=servers.gemma.model,
        prompt="The colours of the rainbow are",
        max_tokens=6,
        temperature=0,
        logprobs=3,
    )
    logprobs = done.choices[0].logprobs
    assert logprobs is not None and logprobs.tokens and logprobs.token_logprobs and logprobs.top_logprobs
    assert "".join(logprobs.tokens) == done.choices[0].text
    assert logprobs.text_offset == [
        sum(len(t) for t in logprobs.tokens[:i]) for i in range(len(logprobs.tokens))
    ]
    for token, value, top in zip(
        logprobs.tokens, logprobs.token_logprobs, logprobs.top_logprobs, strict=True
    ):
        assert len(top) == 3 and max(top.values()) == pytest.approx(value, abs=1e-6) and token in top


def test_top_logprobs_needs_logprobs(servers: Servers) -> None:
    with pytest.raises(BadRequestError):
        servers.gemma.client().chat.completions.create(
            model=servers.gemma.model, messages=ASK, top_logprobs=3
        )


# -- embeddings ------------------------------------------------------------------------------


def test_embeddings(servers: Servers) -> None:
    client = servers.gemma.client()
    n_embd = httpx.get(servers.gemma.url + "/v1/models", timeout=10).json()["data"][0]["meta"]["n_embd"]
    result = client.embeddings.create(
        model=servers.gemma.model, input=["a red apple", "a red apple", "the stock market"]
    )
    vectors = [d.embedding for d in result.data]
    assert [d.index for d in result.data] == [0, 1, 2]
    assert all(len(v) == n_embd for v in vectors) and n_embd == 640
    assert vectors[0] == vectors[1]
    assert vectors[0] != vectors[2]
    assert math.isclose(sum(x * x for x in vectors[0]), 1.0, rel_tol=1e-4)
    assert result.usage.prompt_tokens == result.usage.total_tokens > 6
    tokens = httpx.post(
        servers.gemma.url + "/tokenize", json={"content": "a red apple", "add_special": True}
    ).json()
    by_tokens = client.embeddings.create(model=servers.gemma.model, input=tokens["tokens"]).data[0].embedding
    assert by_tokens == pytest.approx(vectors[0], abs=1e-5)
    raw = httpx.post(
        servers.gemma.url + "/v1/embeddings",
        json={"input": "a red apple", "encoding_format": "base64"},
        timeout=60,
    ).json()
    packed = base64.b64decode(raw["data"][0]["embedding"])
    assert list(struct.unpack(f"<{n_embd}f", packed)) == pytest.approx(vectors[0], abs=1e-6)


def test_embeddings_off_is_a_clear_400(servers: Servers) -> None:
    response = httpx.post(servers.by_kind["generic"].url + "/v1/embeddings", json={"input": "hi"}, timeout=30)
    assert response.status_code == 400 and "--embeddings" in response.json()["error"]["message"]
    assert response.json()["error"]["code"] == "embeddings_disabled"


# -- prompt-prefix reuse ---------------------------------------------------------------------


def conversation(turns: int) -> list[dict[str, str]]:
    messages: list[dict[str, str]] = [{"role": "system", "content": "You answer in one short sentence."}]
    for i in range(turns):
        messages.append({"role": "user", "content": f"Question {i}: what is {i} plus {i}? Explain briefly."})
        messages.append(
            {"role": "assistant", "content": f"{i} plus {i} is {2 * i}, because adding doubles it."}
        )
    messages.append({"role": "user", "content": "Now say all the answers again."})
    return messages


def test_prefix_reuse_keeps_the_text_and_counts_cached_tokens(servers: Servers) -> None:
    client = servers.gemma.client()
    ask = {"model": servers.gemma.model, "max_tokens": 24, "temperature": 0}
    client.chat.completions.create(messages=conversation(3), **ask)  # type: ignore[arg-type]
    cached_before = servers.gemma.metric("slimllm_prompt_tokens_cached_total")
    warm = client.chat.completions.create(messages=conversation(4), **ask)  # type: ignore[arg-type]
    cold = client.chat.completions.create(messages=conversation(4), extra_body={"cache_prompt": False}, **ask)  # type: ignore[arg-type]
    assert warm.usage is not None and cold.usage is not None
    details = warm.usage.prompt_tokens_details
    assert details is not None and details.cached_tokens is not None
    assert details.cached_tokens > warm.usage.prompt_tokens // 2, warm.usage
    assert (
        cold.usage.prompt_tokens_details is not None and cold.usage.prompt_tokens_details.cached_tokens == 0
    )
    assert warm.choices[0].message.content == cold.choices[0].message.content
    assert servers.gemma.metric("slimllm_prompt_tokens_cached_total") - cached_before == details.cached_tokens


def test_each_conversation_goes_back_to_its_slot(servers: Servers) -> None:
    """Two conversations at once on two slots: each next turn finds its own prefix cached."""
    client = servers.gemma.client()

    def chat(topic: str, turns: int) -> Any:
        messages = [{"role": "user", "content": f"Tell me about {topic}. " * 8}, *conversation(turns)[1:]]
        return client.chat.completions.create(
            model=servers.gemma.model, messages=messages, max_tokens=8, temperature=0
        )  # type: ignore[arg-type]

    with ThreadPoolExecutor(2) as pool:
        list(pool.map(chat, ["the sea", "the mountains"], [2, 2]))
        answers = list(pool.map(chat, ["the sea", "the mountains"], [3, 3]))
    for answer in answers:
        assert answer.usage.prompt_tokens_details.cached_tokens > answer.usage.prompt_tokens // 2, (
            answer.usage
        )


# -- through the gateway ---------------------------------------------------------------------


def test_the_gateway_passes_everything_through(servers: Servers) -> None:
    client = OpenAI(base_url=servers.gateway.url + "/v1", api_key=GATEWAY_KEY, max_retries=0, timeout=300)
    answer = client.chat.completions.create(
        model="gemma",
        messages=[{"role": "user", "content": "Describe a person as JSON."}],
        response_format={"type": "json_schema", "json_schema": {"name": "person", "schema": PERSON}},
        max_tokens=400,
        temperature=0,
        logprobs=True,
        top_logprobs=2,
    )
    jsonschema.validate(json.loads(answer.choices[0].message.content or ""), PERSON)
    assert answer.choices[0].logprobs is not None and answer.choices[0].logprobs.content
    called = client.chat.completions.create(
        model="gemma",
        messages=ASK,
        tools=TOOLS,
        tool_choice="required",
        max_tokens=100,  # type: ignore[arg-type]
    )
    check_calls(called.choices[0].message.tool_calls or [], {"get_weather", "get_time"})
    _, deltas, finish, _ = streamed(
        client, model="gemma", messages=ASK, tools=TOOLS, tool_choice="required", max_tokens=100
    )
    assert finish == "tool_calls"
    check_calls(deltas, {"get_weather", "get_time"})
    embedded = client.embeddings.create(model="gemma", input="a red apple")
    assert len(embedded.data[0].embedding) == 640
    with pytest.raises(BadRequestError):  # a server knob stays refused at the gateway
        client.chat.completions.create(model="gemma", messages=ASK, extra_body={"cache_prompt": False})


@pytest.mark.parametrize("model", ["gemma", "qwen25"])
def test_parallel_calls_when_asked(servers: Servers, model: str) -> None:
    server = served(servers, model)
    answer = server.client().chat.completions.create(
        model=server.model,
        messages=ASK,
        tools=TOOLS,  # type: ignore[arg-type]
        tool_choice="required",
        parallel_tool_calls=True,
        max_tokens=300,
        temperature=0.8,
        seed=5,
    )
    calls = answer.choices[0].message.tool_calls or []
    check_calls(calls, {"get_weather", "get_time"})  # a last call cut off by max_tokens is left out
