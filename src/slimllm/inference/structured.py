"""Structured outputs: JSON mode and JSON Schema as llama.cpp grammars (GBNF).

The grammar is applied while sampling, so whatever the model, every token it may pick keeps the
output inside the grammar. The JSON-Schema-to-GBNF converter is llama-cpp-python's (a port of
llama.cpp's own); it imports only the standard library, so it is loaded from the package directory
the same way as the ctypes binding. It silently ignores keywords it cannot express, so every
schema is checked first against the keywords it does enforce: anything else is a client error
naming the keyword and where it is, never a grammar that quietly accepts more than asked.
"""

from __future__ import annotations

import importlib
import json
import re
import types
from collections.abc import Iterator
from typing import Any

from slimllm.inference import binding


class SchemaError(ValueError):
    """A JSON Schema this server cannot enforce; the message names the keyword and its place."""


# Keywords the converter turns into grammar rules.
ENFORCED = frozenset(
    {
        "type",
        "properties",
        "required",
        "additionalProperties",
        "items",
        "prefixItems",
        "minItems",
        "maxItems",
        "enum",
        "const",
        "anyOf",
        "oneOf",
        "allOf",
        "$ref",
        "$defs",
        "definitions",
        "pattern",
        "format",
        "minLength",
        "maxLength",
    }
)
# Keywords that say nothing about which documents are valid.
ANNOTATIONS = frozenset(
    {
        "title",
        "description",
        "default",
        "examples",
        "$schema",
        "$id",
        "$comment",
        "deprecated",
        "readOnly",
        "writeOnly",
        "strict",
    }
)
FORMATS = frozenset({"date", "time", "date-time", "uuid", "uuid1", "uuid2", "uuid3", "uuid4", "uuid5"})
TYPES = frozenset({"object", "array", "string", "number", "integer", "boolean", "null"})
# The converter writes a bound of n as n nested optional groups, and llama.cpp parses groups
# recursively: a bound or a pattern repetition past this is refused rather than risk the parser.
MAX_REPEAT = 1000
MAX_PATTERN = 1000
MAX_GRAMMAR_BYTES = 1 << 20
_QUANTIFIER = re.compile(r"\{\s*(\d*)\s*(?:,\s*(\d*)\s*)?\}")


def _grammar_module() -> types.ModuleType:
    binding.load()  # makes the llama_cpp package importable without running its __init__
    return importlib.import_module("llama_cpp.llama_grammar")


def json_object_grammar() -> str:
    """Any JSON object (response_format {"type": "json_object"})."""
    return str(_grammar_module().JSON_GBNF)


def _subschemas(node: dict[str, Any], where: str) -> Iterator[tuple[Any, str]]:
    for key in ("properties", "$defs", "definitions"):
        value = node.get(key)
        if isinstance(value, dict):
            for name, sub in value.items():
                yield sub, f"{where}/{key}/{name}"
    for key in ("anyOf", "oneOf", "allOf", "prefixItems"):
        value = node.get(key)
        if isinstance(value, list):
            for i, sub in enumerate(value):
                yield sub, f"{where}/{key}/{i}"
    items = node.get("items")
    if isinstance(items, list):
        for i, sub in enumerate(items):
            yield sub, f"{where}/items/{i}"
    elif items is not None:
        yield items, f"{where}/items"
    extra = node.get("additionalProperties")
    if isinstance(extra, dict):
        yield extra, f"{where}/additionalProperties"


def check_schema(schema: Any, where: str = "#") -> None:
    """Raise SchemaError for the first keyword (or value) the grammar cannot enforce."""
    if isinstance(schema, bool):
        if schema is False:
            raise SchemaError(f"the schema at {where} is `false`, which no document satisfies")
        return
    if not isinstance(schema, dict):
        raise SchemaError(f"the schema at {where} must be an object, not {type(schema).__name__}")
    for key in schema:
        if key not in ENFORCED and key not in ANNOTATIONS:
            raise SchemaError(
                f"the schema uses '{key}' at {where}, which this server cannot enforce while sampling"
            )
    kinds = schema.get("type")
    for kind in kinds if isinstance(kinds, list) else [kinds] if kinds is not None else []:
        if kind not in TYPES:
            raise SchemaError(f"the schema at {where} has an unknown type {kind!r}")
    fmt = schema.get("format")
    if fmt is not None and fmt not in FORMATS:
        raise SchemaError(
            f"the schema uses format '{fmt}' at {where}, which this server cannot enforce while "
            f"sampling (it can: {', '.join(sorted(FORMATS))})"
        )
    ref = schema.get("$ref")
    if ref is not None and not (isinstance(ref, str) and ref.startswith("#/")):
        raise SchemaError(f"the schema at {where} refers to {ref!r}; only local references (#/...) work")
    for key in ("minItems", "maxItems", "minLength", "maxLength"):
        value = schema.get(key)
        whole = isinstance(value, int) and not isinstance(value, bool)
        if value is not None and not (whole and 0 <= value <= MAX_REPEAT):
            raise SchemaError(f"'{key}' at {where} must be a whole number from 0 to {MAX_REPEAT}")
    for low, high in (("minItems", "maxItems"), ("minLength", "maxLength")):
        if schema.get(low, 0) > schema.get(high, MAX_REPEAT):
            raise SchemaError(f"'{low}' is above '{high}' at {where}")
    pattern = schema.get("pattern")
    if pattern is not None:
        if not (isinstance(pattern, str) and pattern.startswith("^") and pattern.endswith("$")):
            raise SchemaError(f"the pattern at {where} must be anchored (start with ^ and end with $)")
        if len(pattern) > MAX_PATTERN:
            raise SchemaError(f"the pattern at {where} is longer than {MAX_PATTERN} characters")
        for match in _QUANTIFIER.finditer(pattern):
            if any(n and int(n) > MAX_REPEAT for n in match.groups()):
                raise SchemaError(f"the pattern at {where} repeats more than {MAX_REPEAT} times")
    for sub, sub_where in _subschemas(schema, where):
        check_schema(sub, sub_where)


def _converter() -> Any:
    grammar = _grammar_module()
    return grammar.SchemaConverter(prop_order={}, allow_fetch=False, dotall=False, raw_pattern=False)


def schema_grammar(schema: dict[str, Any]) -> str:
    """A grammar whose documents are exactly the JSON values valid under `schema`."""
    check_schema(schema)
    converter = _converter()
    try:
        resolved = converter.resolve_refs(json.loads(json.dumps(schema)), "input")
        converter.visit(resolved, "")
        grammar = str(converter.format_grammar())
    except (AssertionError, ValueError, KeyError, TypeError, IndexError, RecursionError) as exc:
        raise SchemaError(f"the schema cannot be turned into a grammar: {exc}") from None
    return _bounded(grammar)


def _bounded(grammar: str) -> str:
    if len(grammar) > MAX_GRAMMAR_BYTES:
        raise SchemaError(f"the schema makes a grammar of {len(grammar)} bytes; at most {MAX_GRAMMAR_BYTES}")
    return grammar


def wrapped_grammar(values: list[tuple[str, dict[str, Any]]], root: str) -> str:
    """A grammar with one rule per (name, schema) and `root` (GBNF using those names) on top.

    Used for tool calls: each name is the JSON of one call; `root` says how the model's format
    wraps them (`"<tool_call>" ... "</tool_call>"`, `"[TOOL_CALLS]" "[" ... "]"`, ...).
    """
    converter = _converter()
    for name, schema in values:
        check_schema(schema)
        try:
            resolved = converter.resolve_refs(json.loads(json.dumps(schema)), name)
            converter.visit(resolved, name)
        except (AssertionError, ValueError, KeyError, TypeError, IndexError, RecursionError) as exc:
            raise SchemaError(f"the schema cannot be turned into a grammar: {exc}") from None
    converter._rules["root"] = root
    return _bounded(str(converter.format_grammar()))
