"""Both apps' request guards, in process (real uvicorn, real HTTP), no Docker, no model:

- a message without the content its role needs (`{"messages":[{"role":"tool"}]}`) is a 400 naming
  it, and nothing is generated; the official `openai` client's tool-call history stays valid;
- a request without max_tokens gets the default (--default-max-tokens), not the rest of the context;
- an integer-valued float seed (3891436076.0) is that integer, a fractional one a 400;
- every 405 carries `Allow` with the route's methods (RFC 9110), mounts included;
- /openapi.json offers /v1/embeddings only when the server serves embeddings;
- a chat template that loops gets 400 within its time budget, and the server answers the next request.

The inference server runs over a stand-in for llama.cpp (FakeEngine: a byte tokenizer and a real
Jinja chat template) that records the jobs it is given; the gateway runs in front of the
stand-in backend of tests/fakes/openai_backend.py, which records the requests it gets.
"""

from __future__ import annotations

import collections
import concurrent.futures
import ipaddress
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest

from slimllm.chat.app import Protection
from slimllm.clitypes import ClientSettings
from slimllm.inference import tools as toolcalls
from slimllm.inference.api import Settings, create_app
from slimllm.inference.chat_templates import JinjaChatTemplate
from slimllm.inference.engine import Finished, Job, Stats
from tests.support import serving, wait_until
from tests.test_gateway_auth import fake, gateway  # noqa: F401  (fake: the backend fixture)

CHATML = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\\n{% endif %}"
)
# Loops for hours (10^10 steps) when the first message says "loop": a GGUF's template is code.
LOOPING = (
    "{% if messages[0]['content'] == 'loop' %}"
    "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}"
    "{% endif %}" + CHATML
)
USER = [{"role": "user", "content": "Name three colours."}]


class FakeEngine:
    """What the API asks of the engine: bytes as tokens, a real Jinja template, and a job that
    ends at once with one token of text. The jobs are kept for the tests to read."""

    def __init__(self, template: str = CHATML) -> None:
        self.chat = JinjaChatTemplate(template, "", "", "test")
        self.tool_format = toolcalls.GENERIC
        self.model_path = Path("/models/fake.gguf")
        self.ctx_per_slot, self.n_vocab, self.batch_size = 16384, 256, 512  # bytes: ~4 per real token
        self.embeddings, self.n_embd, self.pooling_name = False, 8, None
        self.general_name, self.architecture, self.bos_token, self.eos_token = "fake", "fake", "", ""
        self.n_ctx_train, self.n_params, self.size_bytes = 4096, 1, 1
        self.slots_count, self.active, self.waiting = 1, 0, 0
        self.busy, self.last_progress, self.stats = False, time.monotonic(), Stats()
        self.jobs: list[Job] = []

    def _token_text(self, token: int) -> str:
        return chr(token)

    def chat_tokens(self, rendered: str) -> list[int]:
        return [1, *rendered.encode()]  # a BOS first, as Gemma's

    def completion_prompt(self, text: str) -> list[int]:
        return [1, *text.encode()]

    def tokenize(self, text: str, *, add_bos: bool) -> list[int]:
        return list(text.encode())

    def check_grammar(self, grammar: str) -> None:
        pass

    def submit(self, job: Job) -> None:
        self.jobs.append(job)
        job.emit(("text", "ok"))
        job.emit(("done", Finished("length", len(job.prompt), 1)))

    def start(self) -> None:
        pass

    def stop(self) -> None:
        pass

    def alive(self) -> bool:
        return True


@contextmanager
def inference(engine: FakeEngine, settings: Settings | None = None) -> Iterator[str]:
    app = create_app(settings or Settings(model_id="m"), load=lambda: engine, on_fatal=print)
    with serving(app) as url:
        wait_until(lambda: httpx.get(url + "/health").status_code == 200, "the stand-in engine loaded")
        yield url


@pytest.fixture(scope="module")
def served() -> Iterator[tuple[str, FakeEngine]]:
    engine = FakeEngine(LOOPING)
    # Four requests at once from this host: a local client, as in the stacks (no per-client cap).
    local = ClientSettings(local_clients=(ipaddress.ip_network("127.0.0.0/8"),))
    with inference(engine, Settings(model_id="m", clients=local)) as url:
        yield url, engine


def chat(url: str, body: dict[str, Any], timeout: float = 10) -> httpx.Response:
    return httpx.post(url + "/v1/chat/completions", json=body, timeout=timeout)


# -- messages --------------------------------------------------------------------------------

REFUSED = {
    "tool": ([{"role": "tool"}], "messages[0].content"),  # the ten bytes
    "tool-no-call-id": ([{"role": "tool", "content": "42"}], "messages[0].tool_call_id"),
    "user": ([{"role": "user"}], "messages[0].content"),
    "system-null": ([{"role": "system", "content": None}], "messages[0].content"),
    "developer": ([{"role": "developer"}], "messages[0].content"),
    "assistant": ([{"role": "assistant"}], "messages[0].content"),
    "assistant-no-calls": ([{"role": "assistant", "content": None, "tool_calls": []}], "messages[0].content"),
    "unknown-role": ([{"role": "function", "content": "x"}], "messages[0].role"),
    "no-role": ([*USER, {"content": "x"}], "messages[1].role"),
}


@pytest.mark.parametrize(("messages", "param"), list(REFUSED.values()), ids=list(REFUSED))
def test_a_message_without_what_its_role_needs_is_refused(
    served: tuple[str, FakeEngine], messages: list[dict[str, Any]], param: str
) -> None:
    url, engine = served
    before = len(engine.jobs)
    answer = chat(url, {"messages": messages})
    assert answer.status_code == 400, answer.text
    assert answer.json()["error"]["param"] == param, answer.json()
    assert len(engine.jobs) == before  # nothing generated


def test_the_openai_clients_tool_call_history_is_accepted(served: tuple[str, FakeEngine]) -> None:
    import openai

    url, _ = served
    client = openai.OpenAI(base_url=url + "/v1", api_key="none", max_retries=0)
    call = {"id": "call_1", "type": "function", "function": {"name": "add", "arguments": '{"a": 1}'}}
    completion = client.chat.completions.create(
        model="m",
        messages=[
            {"role": "developer", "content": "Be brief."},
            {"role": "user", "content": [{"type": "text", "text": "Add one."}]},
            {"role": "assistant", "content": None, "tool_calls": [call]},  # type: ignore[list-item]
            {"role": "tool", "content": "2", "tool_call_id": "call_1"},
            {"role": "assistant", "tool_calls": [call]},  # type: ignore[list-item]
            {"role": "tool", "content": [{"type": "text", "text": "2"}], "tool_call_id": "call_1"},
        ],
    )
    assert completion.choices[0].message.content == "ok"


# -- max_tokens and seed ---------------------------------------------------------------------


def test_a_request_without_max_tokens_gets_the_default(served: tuple[str, FakeEngine]) -> None:
    url, engine = served
    assert chat(url, {"messages": USER}).status_code == 200
    assert engine.jobs[-1].max_tokens == 1024  # not the 2048 limit, not the ~4000 left in the context
    answer = httpx.post(url + "/v1/completions", json={"prompt": "Once"}, timeout=10)
    assert answer.status_code == 200, answer.text
    assert engine.jobs[-1].max_tokens == 16  # OpenAI's completions default
    assert chat(url, {"messages": USER, "max_tokens": 2000}).status_code == 200
    assert engine.jobs[-1].max_tokens == 2000  # asked for: up to the limit


def test_the_default_max_tokens_is_a_setting_within_the_limit() -> None:
    for settings, expected in [
        (Settings(model_id="m", default_max_tokens=7), 7),
        (Settings(model_id="m", max_tokens_limit=5, default_max_tokens=7), 5),
    ]:
        engine = FakeEngine()
        with inference(engine, settings) as url:
            assert chat(url, {"messages": USER}).status_code == 200
            doc = httpx.get(url + "/openapi.json").json()
        assert engine.jobs[-1].max_tokens == expected
        schema = doc["components"]["schemas"]["ChatCompletionRequest"]["properties"]["max_tokens"]
        assert f"default {expected}" in str(schema), schema


def test_an_integer_valued_float_seed_is_that_integer(served: tuple[str, FakeEngine]) -> None:
    url, engine = served
    answer = chat(url, {"messages": USER, "seed": 3891436076.0, "max_tokens": 3.0})
    assert answer.status_code == 200, answer.text
    assert engine.jobs[-1].sampling.seed == 3891436076
    assert engine.jobs[-1].max_tokens == 3
    answer = chat(url, {"messages": USER, "seed": 1.5})
    assert answer.status_code == 400 and answer.json()["error"]["param"] == "seed", answer.text


def test_a_literal_takes_only_its_own_json_type(served: tuple[str, FakeEngine]) -> None:
    """Found by schemathesis: Python takes 0 for False and True for 1, JSON Schema does not."""
    url, _ = served
    for extra, param in [({"echo": 0}, "echo"), ({"best_of": True}, "best_of")]:
        answer = httpx.post(url + "/v1/completions", json={"prompt": "x", **extra}, timeout=10)
        assert answer.status_code == 400 and answer.json()["error"]["param"] == param, answer.text
    answer = httpx.post(url + "/v1/completions", json={"prompt": "x", "echo": False, "best_of": 1.0})
    assert answer.status_code == 200, answer.text


# -- the route table -------------------------------------------------------------------------

METHODS = ("GET", "POST", "PUT", "DELETE", "PATCH")


def allowed_methods(doc: dict[str, Any], path: str) -> set[str]:
    methods = {m.upper() for m in doc["paths"][path]}
    return methods | ({"HEAD"} if "GET" in methods else set())


def check_allow(url: str, headers: dict[str, str]) -> int:
    """Every method a documented path does not take gets 405 with Allow = the ones it takes."""
    doc = httpx.get(url + "/openapi.json", headers=headers, timeout=10).json()
    checked = 0
    for path in doc["paths"]:
        concrete = path.replace("{model}", "gemma").replace("{path}", "app.js")
        allowed = allowed_methods(doc, path)
        for method in set(METHODS) - allowed:
            answer = httpx.request(method, url + concrete, headers=headers, timeout=10)
            assert answer.status_code == 405, (method, path, answer.status_code)
            allow = {m.strip() for m in answer.headers.get("allow", "").split(",") if m.strip()}
            assert allow == allowed, (method, path, answer.headers.get("allow"))
            checked += 1
    return checked


def test_tokenize_takes_no_more_text_than_a_prompt_can_be(served: tuple[str, FakeEngine]) -> None:
    """/tokenize was the one text route without the context's bound: a 1 MB body was tokenized
    whole, and its answer was millions of ids."""
    url, engine = served
    most = engine.ctx_per_slot * 2  # the stand-in vocabulary's longest token is 2 bytes
    fits = httpx.post(url + "/tokenize", json={"content": "a" * most}, timeout=30)
    assert fits.status_code == 200 and len(fits.json()["tokens"]) == most
    too_long = httpx.post(url + "/tokenize", json={"content": "a" * (most + 1)}, timeout=30)
    assert too_long.status_code == 400, too_long.text
    assert too_long.json()["error"]["code"] == "context_length_exceeded"
    assert too_long.json()["error"]["param"] == "content"


def test_every_405_of_the_inference_server_says_what_is_allowed(served: tuple[str, FakeEngine]) -> None:
    url, _ = served
    assert check_allow(url, {}) >= 30


def test_every_405_of_the_gateway_says_what_is_allowed(fake: tuple[str, list[list[Any]]]) -> None:  # noqa: F811
    base, _ = fake
    key = "guards-key-" + "x" * 24
    with gateway(f"gemma={base}/xss", Protection(api_key=key)) as (url, _):
        # /login (GET and POST, one route) and /static/{path} (a mount) included
        assert check_allow(url, {"Authorization": f"Bearer {key}"}) >= 40


def test_embeddings_are_documented_only_when_served() -> None:
    engine = FakeEngine()
    with inference(engine, Settings(model_id="m")) as url:
        assert "/v1/embeddings" not in httpx.get(url + "/openapi.json").json()["paths"]
        refused = httpx.post(url + "/v1/embeddings", json={"input": "x"})  # still says how to turn it on
        assert refused.status_code == 400 and refused.json()["error"]["code"] == "embeddings_disabled"
    engine = FakeEngine()
    engine.embeddings = True
    with inference(engine, Settings(model_id="m", embeddings=True)) as url:
        assert "/v1/embeddings" in httpx.get(url + "/openapi.json").json()["paths"]


def test_the_gateway_documents_embeddings_only_when_a_backend_serves_them() -> None:
    for serves in (False, True):
        engine = FakeEngine()
        engine.embeddings = serves
        with (
            inference(engine, Settings(model_id="m", embeddings=serves)) as backend,
            gateway(f"gemma={backend}", Protection()) as (url, _),
        ):
            doc = httpx.get(url + "/openapi.json").json()
        assert ("/v1/embeddings" in doc["paths"]) is serves, sorted(doc["paths"])


# -- the gateway -----------------------------------------------------------------------------


def test_the_gateway_guards_the_same_way(fake: tuple[str, list[list[Any]]]) -> None:  # noqa: F811
    base, seen = fake
    with gateway(f"gemma={base}/xss", Protection()) as (url, _):
        refused = chat(url, {"model": "gemma", "messages": [{"role": "tool"}]})
        assert refused.status_code == 400 and refused.json()["error"]["param"] == "messages[0].content"
        assert not any(r[1].endswith("/chat/completions") for r in seen)  # nothing reached the backend
        answer = chat(url, {"model": "gemma", "messages": USER, "seed": 3891436076.0})
        assert answer.status_code == 200, answer.text
        sent = [r[2] for r in seen if r[1].endswith("/chat/completions")][-1]
        assert sent["seed"] == 3891436076 and isinstance(sent["seed"], int)
        assert sent["max_tokens"] == 512  # the gateway's default, not its 1024 limit
        doc = httpx.get(url + "/openapi.json").json()
        assert "default 512" in str(doc["components"]["schemas"]["ChatCompletionRequest"])


# -- the chat template's time budget ---------------------------------------------------------


def test_a_looping_template_gets_400_within_its_budget(served: tuple[str, FakeEngine]) -> None:
    url, engine = served
    before = len(engine.jobs)
    # As many looping requests as the server has text threads (4): each would hold one for hours.
    started = time.monotonic()
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        answers = list(
            pool.map(lambda _: chat(url, {"messages": [{"role": "user", "content": "loop"}]}), range(4))
        )
    took = time.monotonic() - started
    for answer in answers:
        assert answer.status_code == 400, answer.text
        assert answer.json()["error"]["code"] == "template_timeout", answer.text
    assert took < 2.0 + 1.5, took  # the 2 s budget, plus slack for a busy machine
    assert len(engine.jobs) == before
    # The threads are back: the next request renders and answers at once.
    started = time.monotonic()
    assert chat(url, {"messages": USER}).status_code == 200
    assert time.monotonic() - started < 1.0
    rendered = httpx.post(url + "/apply-template", json={"messages": USER}, timeout=10)
    assert rendered.status_code == 200 and "Name three colours." in rendered.json()["prompt"]


def test_the_template_budget_costs_little() -> None:
    """The budget is a deadline a watchdog thread enforces; a render pays microseconds for it."""
    template = JinjaChatTemplate(CHATML, "", "", "test")
    messages = [{"role": "user", "content": "hello there " * 20}] * 10
    rounds = 2000

    def timed(render: Any) -> float:
        started = time.perf_counter()
        for _ in range(rounds):
            render()
        return (time.perf_counter() - started) / rounds

    raw = lambda: template._template.render(  # noqa: E731
        messages=messages, tools=None, bos_token="", eos_token="", add_generation_prompt=True
    )
    budgeted = lambda: template.render(messages)  # noqa: E731
    timed(budgeted)  # warm: the watchdog thread starts
    plain, guarded = min(timed(raw) for _ in range(3)), min(timed(budgeted) for _ in range(3))
    print(f"render {plain * 1e6:.1f} us, with the budget {guarded * 1e6:.1f} us")
    assert guarded - plain < 50e-6, (plain, guarded)


# -- schemathesis, every check, both modes ---------------------------------------------------

# Refusals of valid-looking data that no JSON Schema can foresee: a prompt too long for the
# model's context (it depends on the tokenizer), a named tool_choice missing from `tools` (JSON
# Schema cannot compare two fields' values), and a JSON Schema in `response_format` or a tool's
# `parameters` that uses a keyword the grammar cannot enforce (the document takes any object
# there). Everything else valid must be accepted.
MODEL_REFUSALS = frozenset({"context_length_exceeded", "unknown_tool"})
GRAMMAR_PARAMS = frozenset({"tools", "response_format.json_schema.schema"})


def schemathesis_all(url: str, headers: dict[str, str], examples: int) -> collections.Counter[str]:
    """`schemathesis run --checks all --mode all` in Python: every operation of the app's own
    /openapi.json, `examples` positive and `examples` negative cases each, every check
    (server errors, status codes, content types, headers and bodies true to the document,
    valid data accepted, invalid data refused, Allow on 405, ...). Counts cases and statuses."""
    import schemathesis
    from schemathesis.checks import CHECKS, load_all_checks, positive_data_acceptance
    from schemathesis.generation import GenerationMode

    load_all_checks()
    doc = httpx.get(url + "/openapi.json", headers=headers, timeout=10).json()
    schema = schemathesis.openapi.from_dict(doc)
    counts: collections.Counter[str] = collections.Counter()
    checks = CHECKS.get_all()
    lenient = [c for c in checks if c is not positive_data_acceptance]
    for result in schema.get_all_operations():
        operation = result.ok()
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            _fuzz_one(url, headers, operation, mode, examples, checks, lenient, counts)
    return counts


def _fuzz_one(
    url: str,
    headers: dict[str, str],
    operation: Any,
    mode: Any,
    examples: int,
    checks: list[Any],
    lenient: list[Any],
    counts: collections.Counter[str],
) -> None:
    from hypothesis import HealthCheck, Phase, given, settings
    from hypothesis.errors import Unsatisfiable

    strategy = operation.as_strategy(generation_mode=mode, headers=headers)

    @settings(
        max_examples=examples,
        deadline=None,
        database=None,
        phases=[Phase.explicit, Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    @given(case=strategy)
    def run(case: Any) -> None:
        response = case.call(base_url=url, timeout=60)
        counts[f"{operation.label} {mode.value}"] += 1
        counts[str(response.status_code)] += 1
        assert response.status_code < 500, (
            f"{operation.label}: {response.status_code} {response.text[:500]}\n{case.as_curl_command()}"
        )
        case.validate_response(response, checks=lenient if _model_refusal(response) else checks)

    started = time.monotonic()
    try:
        run()
    except Unsatisfiable:
        # Nothing to make invalid: an operation without a body or parameters has no negative cases.
        assert mode.value == "negative" and not operation.body, operation.label
    label = f"{operation.label} {mode.value}"
    print(f"  {label}: {counts[label]} cases, {time.monotonic() - started:.1f} s")


def _model_refusal(response: Any) -> bool:
    if response.status_code != 400:
        return False
    try:
        error = response.json()["error"]
        code, param = error["code"], error["param"]
    except (ValueError, KeyError, TypeError):
        return False
    return code in MODEL_REFUSALS or (code == "unsupported" and param in GRAMMAR_PARAMS)


@pytest.fixture
def grammar_free(monkeypatch: pytest.MonkeyPatch) -> None:
    """The grammar converter is llama.cpp's (not in this venv); the stand-in engine takes any."""
    import slimllm.inference.api as api

    monkeypatch.setattr(api, "json_object_grammar", lambda: 'root ::= "{}"')
    monkeypatch.setattr(api, "schema_grammar", lambda schema: 'root ::= "{}"')
    monkeypatch.setattr(api.toolcalls, "call_grammar", lambda *args, **kwargs: 'root ::= "{}"')


@pytest.mark.usefixtures("grammar_free")
def test_schemathesis_finds_nothing_in_process(fake: tuple[str, list[list[Any]]]) -> None:  # noqa: F811
    """Both apps in process (the container run is tests/test_public_endpoint.py test_fuzz)."""
    base, _ = fake
    key = "fuzz-key-" + "y" * 24
    auth = {"Authorization": f"Bearer {key}"}
    with inference(FakeEngine(LOOPING), Settings(model_id="m", api_key=key)) as url:
        counts = schemathesis_all(url, auth, 25)
    with gateway(f"gemma={base}/xss", Protection(api_key=key, rate_limit=0)) as (url, _):
        counts += schemathesis_all(url, auth, 25)
    cases = sum(v for k, v in counts.items() if " " in k)
    print(f"{cases} cases, statuses {sorted((k, v) for k, v in counts.items() if k.isdigit())}")
    assert cases >= 400, counts  # 25 a mode for each operation with a body or parameters
    assert counts["200"] >= 50, counts
