"""What turning a JSON Schema into a grammar may cost, without Docker: the checks before
converting (each refusal names the part), the budget while converting, and a generated family of
nested schemas that never makes the converter build more than its budget.

The converter is llama-cpp-python's, the same file the image installs (tests/fixtures holds the
locked version's, as the test venv has no llama-cpp-python); the structured module loads its own
copy of it either way.
"""

from __future__ import annotations

import re
import time
import tracemalloc
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from slimllm.inference import structured, tools
from slimllm.inference.structured import (
    CONVERSION_BUDGET,
    MAX_DEPTH,
    MAX_GRAMMAR_BYTES,
    MAX_RULE_NAME,
    SchemaError,
    schema_grammar,
)
from tests.conftest import REPO_ROOT

FIXTURES = Path(__file__).parent / "fixtures" / "llama-cpp-python"
CONVERTER = FIXTURES / "llama_grammar-0.3.36.py.txt"
PATTERN = "^(a){0,1000}$"


@pytest.fixture(autouse=True)
def converter(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    module = structured.load_converter(str(CONVERTER))
    monkeypatch.setattr(structured, "_grammar_module", lambda: module)
    yield


def test_the_fixture_is_the_locked_converter() -> None:
    locked = (REPO_ROOT / "app" / "inference" / "requirements.txt").read_text()
    version = re.search(r"^llama-cpp-python==(\S+)", locked, re.M)
    assert version, "llama-cpp-python is not pinned in app/inference/requirements.txt"
    assert CONVERTER.name == f"llama_grammar-{version.group(1)}.py.txt", (
        "the image's llama-cpp-python moved: refresh tests/fixtures/llama-cpp-python from its sdist"
    )


# -- the hostile family ------------------------------------------------------------------------


def nested(depth: int, length: int, pattern: str = PATTERN) -> dict[str, Any]:
    """Objects in objects under long names, a patterned string at each level (the issue's)."""
    node: dict[str, Any] = {"type": "string", "pattern": pattern}
    for d in range(depth):
        letter = chr(97 + d % 26)
        node = {
            "type": "object",
            "properties": {
                letter * length: node,
                "s" + letter * length: {"type": "string", "pattern": pattern},
            },
        }
    return node


def flat(count: int, length: int, pattern: str = PATTERN) -> dict[str, Any]:
    return {
        "type": "object",
        "properties": {
            f"{i:04d}" + "x" * length: {"type": "string", "pattern": pattern} for i in range(count)
        },
    }


MULTI = "^" + "(a){0,1000}" * 20 + "$"
HOSTILE: dict[str, Any] = {
    # 9.2 KB of body: OOM-killed the 1 GB container of the old code in 1.5 s.
    "nested-multi-quantifier": nested(8, 400, MULTI),
    # 12 KB: a 76 MB grammar, +194 MB.
    "nested-long-names": nested(30, 150),
    "many-properties": flat(40, 100),
    "long-named-arrays": {
        "type": "object",
        "properties": {
            "x" * 500: {"type": "array", "minItems": 1000, "items": {"type": "array", "maxItems": 1000}}
        },
    },
    "anyof": {"anyOf": [{"type": "string", "pattern": MULTI} for _ in range(20)]},
    "defs-refs": {
        "$defs": {"d" * 300: {"type": "string", "pattern": MULTI}},
        "type": "object",
        "properties": {f"p{i}": {"$ref": "#/$defs/" + "d" * 300} for i in range(5)},
    },
    "long-strings": {
        "type": "object",
        "properties": {f"s{i}": {"type": "string", "maxLength": 1000} for i in range(80)},
    },
    "nullable-repeat": {"type": "string", "pattern": "^(a?){16}$"},
    "nested-nullable": {"type": "string", "pattern": "^" + "(" * 12 + "a?" + "){2}" * 12 + "$"},
    "deep": {"type": "object", "properties": {"a": nested(MAX_DEPTH, 1, "^a$")}},
}


def refusal(schema: Any) -> str:
    with pytest.raises(SchemaError) as caught:
        schema_grammar(schema)
    return str(caught.value)


@pytest.mark.parametrize("name", list(HOSTILE))
def test_hostile_schemas_are_refused_naming_the_part(name: str) -> None:
    tracemalloc.start()
    start = time.monotonic()
    try:
        message = refusal(HOSTILE[name])
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    took = time.monotonic() - start
    assert re.search(r"the (schema|pattern) at #", message), message
    assert peak < 16 * CONVERSION_BUDGET, f"{name}: {peak / 1e6:.1f} MB at peak"
    assert took < 2, f"{name}: {took:.2f} s"


def test_the_place_named_is_the_part_that_costs() -> None:
    schema = {
        "type": "object",
        "properties": {"fine": {"type": "string", "maxLength": 20}, "bad": flat(40, 100)},
    }
    assert "#/properties/bad/properties/00" in refusal(schema)
    assert "#/properties/x/items" in refusal(
        {
            "type": "object",
            "properties": {"x": {"type": "array", "items": {"type": "string", "pattern": "^(a?)*$"}}},
        }
    )


def test_a_long_path_of_names_is_refused_before_converting() -> None:
    message = refusal(nested(3, MAX_RULE_NAME // 2, "^a$"))
    assert f"longer than {MAX_RULE_NAME} characters" in message
    assert "#/properties/" in message


def test_too_deep_is_refused() -> None:
    assert f"nested more than {MAX_DEPTH} levels" in refusal(nested(MAX_DEPTH + 2, 1, "^a$"))


@pytest.mark.parametrize(
    ("pattern", "refused"),
    [
        ("^(a?){16}$", True),
        ("^(a?){0,1000}$", True),
        ("^(a|)*$", True),
        ("^(x|y?){0,5}$", True),
        ("^(a{0,3}){2}$", True),
        ("^a)(a?){16}$", True),
        ("^(a){0,1000}$", False),
        ("^[0-9]{5}$", False),
        ("^-?[0-9]+(\\.[0-9]+)?$", False),
        ("^(\\d{1,3}\\.){3}\\d{1,3}$", False),
        ("^([a-z]?[0-9]){3}$", False),
        ("^[0-9a-f]{8}(-[0-9a-f]{4}){3}-[0-9a-f]{12}$", False),
    ],
)
def test_repeating_what_can_be_empty_is_refused(pattern: str, refused: bool) -> None:
    schema = {"type": "string", "pattern": pattern}
    if refused:
        assert "repeats a part that can be empty" in refusal(schema)
    else:
        assert schema_grammar(schema)


def test_the_budget_stops_the_converter_itself(monkeypatch: pytest.MonkeyPatch) -> None:
    """With the checks before converting out of the way, the converter still stops at its budget."""
    monkeypatch.setattr(structured, "MAX_GRAMMAR_BYTES", 1 << 40)
    monkeypatch.setattr(structured, "MAX_RULE_NAME", 1 << 20)
    tracemalloc.start()
    try:
        message = refusal(HOSTILE["nested-multi-quantifier"])
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert "makes a grammar too large to build" in message
    assert "#/properties/" in message
    assert peak < 16 * CONVERSION_BUDGET


def test_many_colliding_names_are_charged(monkeypatch: pytest.MonkeyPatch) -> None:
    """Property names that all become the same rule name make the converter search for a free
    one each time (quadratic); the search is charged, so it stops."""
    names = [chr(0x4E00 + i) for i in range(6000)]  # each escapes to "-"
    schema = {"type": "object", "properties": {n: {"type": "string", "maxLength": 1} for n in names}}
    start = time.monotonic()
    message = refusal(schema)
    assert "too large to build" in message or "would make a grammar" in message
    assert time.monotonic() - start < 3


def test_tools_share_one_budget_and_name_the_tool() -> None:
    many = [{"type": "function", "function": {"name": f"t{i}", "parameters": flat(8, 40)}} for i in range(10)]
    with pytest.raises(SchemaError) as caught:
        tools.call_grammar(many, tools.HERMES, parallel=True)
    assert re.search(r'tool "t\d" #/parameters/properties/', str(caught.value)), caught.value


def test_ordinary_schemas_still_convert() -> None:
    person = {
        "type": "object",
        "properties": {
            "name": {"type": "string", "maxLength": 100},
            "zip": {"type": "string", "pattern": "^[0-9]{5}$"},
            "tags": {"type": "array", "items": {"type": "string"}, "maxItems": 3},
            "when": {"type": "string", "format": "date-time"},
            "kind": {"enum": ["a", "b"]},
            "more": {"$ref": "#/$defs/more"},
        },
        "required": ["name"],
        "$defs": {"more": {"type": "object", "properties": {"x": {"type": "integer"}}}},
    }
    assert "root ::=" in schema_grammar(person)
    weather = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}
    grammar = tools.call_grammar(
        [{"type": "function", "function": {"name": "get_weather", "parameters": weather}}],
        tools.HERMES,
        parallel=True,
    )
    assert "<tool_call>" in grammar


# -- a generated family ------------------------------------------------------------------------

NAMES = st.text(alphabet="abcxyz_é-", min_size=1, max_size=300)
LEAVES = st.one_of(
    st.builds(
        lambda p: {"type": "string", "pattern": p}, st.sampled_from([PATTERN, MULTI, "^[a-z]{0,999}$", "^a$"])
    ),
    st.builds(lambda n: {"type": "string", "maxLength": n}, st.integers(0, 1000)),
    st.just({"type": "integer"}),
)


def _object(children: dict[str, Any]) -> dict[str, Any]:
    return {"type": "object", "properties": children, "required": list(children)[:1]}


SCHEMAS = st.recursive(
    LEAVES,
    lambda inner: st.one_of(
        st.builds(_object, st.dictionaries(NAMES, inner, min_size=1, max_size=6)),
        st.builds(
            lambda i, n: {"type": "array", "items": i, "minItems": n, "maxItems": n},
            inner,
            st.integers(0, 1000),
        ),
        st.builds(lambda alts: {"anyOf": alts}, st.lists(inner, min_size=1, max_size=4)),
    ),
    max_leaves=40,
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(SCHEMAS)
def test_generated_nested_schemas_stay_within_the_budget(schema: dict[str, Any]) -> None:
    """Whatever the nesting: a grammar within MAX_GRAMMAR_BYTES, or a refusal naming a place,
    and never more memory than a few budgets on the way."""
    tracemalloc.start()
    try:
        try:
            grammar = schema_grammar(schema)
        except SchemaError as exc:
            assert re.search(r"at #", str(exc)), exc
        else:
            assert len(grammar) <= MAX_GRAMMAR_BYTES
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 16 * CONVERSION_BUDGET, f"{peak / 1e6:.1f} MB at peak"
