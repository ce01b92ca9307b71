"""Structured outputs: JSON mode and JSON Schema as llama.cpp grammars (GBNF).

The grammar is applied while sampling, so whatever the model, every token it may pick keeps the
output inside the grammar. The JSON-Schema-to-GBNF converter is llama-cpp-python's (a port of
llama.cpp's own); it imports only the standard library, so it is loaded from the package directory
the same way as the ctypes binding. It silently ignores keywords it cannot express, so every
schema is checked first against the keywords it does enforce: anything else is a client error
naming the keyword and where it is, never a grammar that quietly accepts more than asked.

The converter's output can be far larger than its input: a repetition bound of n writes the
item's rule name n times, and rule names are the whole path of property names, so a few KB of
schema (long names, nested objects, `pattern: "^(a){0,1000}$"`) made a grammar of hundreds of MB.
The cost is bounded twice. Before converting, `check_schema` refuses nesting past MAX_DEPTH, a
rule name past MAX_RULE_NAME characters, a pattern that repeats a part that can be empty
(llama.cpp's sampler follows every way of splitting the text among the copies), and a schema
whose estimated grammar (repetition bounds times rule-name lengths) is past MAX_GRAMMAR_BYTES,
naming the part. While converting, every piece of text the converter
builds (each rule it stores, each repetition before it is written out, each name it tries) is
charged to CONVERSION_BUDGET, and the conversion stops with a 400 naming the part being
converted as soon as it is spent, so no schema makes the server build more than that.
"""

from __future__ import annotations

import contextvars
import functools
import importlib
import importlib.machinery
import importlib.util
import json
import re
import types
from collections.abc import Callable, Iterator
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
# The grammar of one schema (or of one request's forced tools), in bytes: the estimate before
# converting and the text after are held to it.
MAX_GRAMMAR_BYTES = 1 << 18
# What converting may build, in characters: the grammar and the text made on the way (each
# repetition is written once, then again inside its rule; names tried for a free one).
CONVERSION_BUDGET = 4 * MAX_GRAMMAR_BYTES
# Subschemas inside subschemas; the converter's rule names grow with each level.
MAX_DEPTH = 32
# Characters in one converter rule name (the path of property names joined by "-").
MAX_RULE_NAME = 1000
_QUANTIFIER = re.compile(r"\{\s*(\d*)\s*(?:,\s*(\d*)\s*)?\}")


@functools.cache
def _grammar_module() -> types.ModuleType:
    binding.load()  # makes the llama_cpp package importable without running its __init__
    spec = importlib.util.find_spec("llama_cpp.llama_grammar")
    if spec is None or spec.origin is None:
        raise SchemaError("llama-cpp-python's grammar module is missing")
    return load_converter(spec.origin)


def load_converter(path: str) -> types.ModuleType:
    """A private copy of llama-cpp-python's llama_grammar module (the file at `path`) whose
    repetitions are charged to the conversion's budget before they are written out."""
    name = "slimllm_llama_grammar"
    kind = (
        importlib.machinery.SourcelessFileLoader
        if path.endswith(".pyc")
        else importlib.machinery.SourceFileLoader
    )
    loader = kind(name, path)
    module = types.ModuleType(name)
    module.__file__ = path
    loader.exec_module(module)
    module._build_repetition = _charged_repetition(module._build_repetition)  # type: ignore[attr-defined]
    return module


def json_object_grammar() -> str:
    """Any JSON object (response_format {"type": "json_object"})."""
    return str(_grammar_module().JSON_GBNF)


def _subschemas(node: dict[str, Any], where: str) -> Iterator[tuple[Any, str, str | None]]:
    """(subschema, its place, the part the converter adds to the rule name, or None where the
    name starts afresh as the definition's own)."""
    for key in ("properties", "$defs", "definitions"):
        value = node.get(key)
        if isinstance(value, dict):
            for name, sub in value.items():
                yield sub, f"{where}/{key}/{name}", None if key != "properties" else str(name)
    for key in ("anyOf", "oneOf", "allOf", "prefixItems"):
        value = node.get(key)
        if isinstance(value, list):
            for i, sub in enumerate(value):
                yield sub, f"{where}/{key}/{i}", f"alternative-tuple-{i}"
    items = node.get("items")
    if isinstance(items, list):
        for i, sub in enumerate(items):
            yield sub, f"{where}/items/{i}", f"tuple-{i}"
    elif items is not None:
        yield items, f"{where}/items", "item"
    extra = node.get("additionalProperties")
    if isinstance(extra, dict):
        yield extra, f"{where}/additionalProperties", "additional-value"


def check_schema(schema: Any, where: str = "#", name: str = "", estimate: _Estimate | None = None) -> None:
    """Raise SchemaError for the first keyword (or value) the grammar cannot enforce, or the
    first part whose grammar would cost too much to build. `name` is the converter's rule-name
    prefix (the tool's, for tool calls); schemas that make one grammar share one `estimate`."""
    _check(schema, where, len(name), 0, estimate or _Estimate())


class _Estimate:
    """The grammar text the repetitions of a schema will write, summed while checking it."""

    def __init__(self) -> None:
        self.total = 0

    def add(self, count: int, item: int, where: str) -> None:
        self.total += count * (item + 8)
        if self.total > MAX_GRAMMAR_BYTES:
            raise SchemaError(
                f"the schema at {where} would make a grammar of more than {MAX_GRAMMAR_BYTES} bytes "
                "(repetition bounds times the length of the names of the properties around it); "
                "use shorter property names, smaller bounds or fewer of them"
            )


def _check(schema: Any, where: str, name: int, depth: int, estimate: _Estimate) -> None:
    if depth > MAX_DEPTH:
        raise SchemaError(f"the schema at {where} is nested more than {MAX_DEPTH} levels deep")
    if name > MAX_RULE_NAME:
        raise SchemaError(
            f"the schema at {where} is too deep for its property names: the path of names to it is "
            f"longer than {MAX_RULE_NAME} characters"
        )
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
    # An array repeats its item's rule name; a string's length repeats the `char` rule.
    items = max(schema.get("minItems", 0), schema.get("maxItems", 0))
    estimate.add(items, name + 16, where)
    estimate.add(max(schema.get("minLength", 0), schema.get("maxLength", 0)), 4, where)
    pattern = schema.get("pattern")
    if pattern is not None:
        if not (isinstance(pattern, str) and pattern.startswith("^") and pattern.endswith("$")):
            raise SchemaError(f"the pattern at {where} must be anchored (start with ^ and end with $)")
        if len(pattern) > MAX_PATTERN:
            raise SchemaError(f"the pattern at {where} is longer than {MAX_PATTERN} characters")
        for match in _QUANTIFIER.finditer(pattern):
            if any(n and int(n) > MAX_REPEAT for n in match.groups()):
                raise SchemaError(f"the pattern at {where} repeats more than {MAX_REPEAT} times")
        if _repeats_empty(pattern):
            raise SchemaError(
                f"the pattern at {where} repeats a part that can be empty (such as `(a?){{3}}`), which "
                "the grammar sampler cannot follow in reasonable time; make the part non-empty"
            )
        # Each {m,n} writes its item (a sub-rule named after this one, or a literal) n times.
        for match in _QUANTIFIER.finditer(pattern):
            count = max(int(n) for n in match.groups() if n) if any(match.groups()) else 0
            estimate.add(count, name + 8, where)
    for sub, sub_where, part in _subschemas(schema, where):
        # The converter names a subschema's rule "<parent>-<part>"; a definition by its own key.
        sub_name = len(sub_where) - len(where) if part is None else name + 1 + len(part)
        _check(sub, sub_where, sub_name, depth + 1, estimate)


def _repeats_empty(pattern: str) -> bool:
    """Whether the (anchored) pattern repeats something that can match nothing: `(a?){16}`,
    `(x*){0,1000}`, `((a?){2}){2}`.

    llama.cpp's grammar sampler follows every way such a repetition can split the text, so a
    200-byte schema with one (`^(a?){16}$`) held the only slot for minutes; the converter's own
    nesting of optional groups for `{0,n}` costs the same.
    """
    i = 0
    body = pattern[1:-1]

    def alternatives() -> bool:  # returns whether it can match nothing
        nonlocal i
        empty = sequence()
        while i < len(body) and body[i] == "|":
            i += 1
            empty = sequence() or empty
        return empty

    def sequence() -> bool:
        nonlocal i
        empty = True
        while i < len(body) and body[i] not in "|)":
            c = body[i]
            atom_empty = False
            if c == "(":
                i += 1
                atom_empty = alternatives()
                i += 1  # the ")"
            elif c == "[":
                i += 1
                while i < len(body) and body[i] != "]":
                    i += 2 if body[i] == "\\" else 1
                i += 1
            else:
                i += 2 if c == "\\" else 1
            while i < len(body) and body[i] in "?*+{":
                q = body[i]
                match = _QUANTIFIER.match(body, i) if q == "{" else None
                if q == "{" and match is None:
                    break
                if atom_empty and q != "?" and not (match and max(int(n or 0) for n in match.groups()) <= 1):
                    raise _EmptyRepeat
                atom_empty = atom_empty or q in "?*" or bool(match and not (match.group(1) or "").strip("0"))
                i = match.end() if match else i + 1
            empty = empty and atom_empty
        return empty

    try:
        while i < len(body):
            alternatives()
            i += 1  # past a ")" that closes nothing (the converter refuses the pattern)
    except _EmptyRepeat:
        return True
    return False


class _EmptyRepeat(Exception):
    pass


class _Budget:
    """What one conversion may still build, in characters, and the part it is converting."""

    def __init__(self, limit: int, places: dict[int, str]) -> None:
        self.left = limit
        self.places = places  # id(subschema) -> its place, for the error
        self.where = ["#"]

    def charge(self, size: int) -> None:
        self.left -= size
        if self.left < 0:
            raise SchemaError(
                f"the schema at {self.where[-1]} makes a grammar too large to build (more than "
                f"{CONVERSION_BUDGET} bytes of text on the way to one of at most {MAX_GRAMMAR_BYTES}); "
                "use shorter property names, smaller bounds or fewer of them"
            )


_BUDGET: contextvars.ContextVar[_Budget] = contextvars.ContextVar("grammar_budget")


def _charged_repetition(build: Callable[..., str]) -> Callable[..., str]:
    """The converter's `_build_repetition`, charging what it will write before writing it: up
    to max(min, max) copies of the item (and separator), each in a group."""

    def charged(
        item_rule: str,
        min_items: int,
        max_items: int | None,
        separator_rule: str | None = None,
        item_rule_is_literal: bool = False,
    ) -> str:
        copies = max(min_items, max_items or 0, 1)
        _BUDGET.get().charge(copies * (len(item_rule) + len(separator_rule or "") + 8))
        return build(item_rule, min_items, max_items, separator_rule, item_rule_is_literal)

    return charged


def _places(schema: Any, where: str, places: dict[int, str]) -> None:
    if isinstance(schema, dict):
        places[id(schema)] = where
        for sub, sub_where, _ in _subschemas(schema, where):
            _places(sub, sub_where, places)


def _bounded_converter() -> Any:
    module = _grammar_module()

    class BoundedConverter(module.SchemaConverter):  # type: ignore[name-defined,misc]
        """llama-cpp-python's converter, charging every rule it stores and every name it tries
        to the conversion's budget, and knowing which part of the schema it is converting."""

        def _add_rule(self, name: str, rule: str) -> str:
            budget = _BUDGET.get()
            if len(name) > MAX_RULE_NAME + 100:
                raise SchemaError(
                    f"the schema at {budget.where[-1]} is too deep for its property names: the path "
                    f"of names to it is longer than {MAX_RULE_NAME} characters"
                )
            # As the converter's own: the name made safe, with a number when another rule has it.
            esc_name = str(module.INVALID_RULE_CHARS_RE.sub("-", name))
            key = esc_name
            i = 0
            while key in self._rules and self._rules[key] != rule:
                budget.charge(len(key) + 8)
                key = f"{esc_name}{i}"
                i += 1
            budget.charge(len(key) + len(rule) + 6)
            self._rules[key] = rule
            return key

        def visit(self, schema: Any, name: str) -> str:
            budget = _BUDGET.get()
            place = budget.places.get(id(schema))
            if place is not None:
                budget.where.append(place)
            try:
                return str(super().visit(schema, name))
            finally:
                if place is not None:
                    budget.where.pop()

    return BoundedConverter(prop_order={}, allow_fetch=False, dotall=False, raw_pattern=False)


def _convert(values: list[tuple[str, Any, str]], root: str | None) -> str:
    """The grammar of each (rule name, schema, its place in the request) within one budget,
    with `root` (GBNF) on top if given."""
    estimate = _Estimate()
    for name, schema, where in values:
        check_schema(schema, where, name, estimate)
    copies = [(name, json.loads(json.dumps(schema))) for name, schema, _ in values]
    places: dict[int, str] = {}
    for (_, schema), (_, _, where) in zip(copies, values, strict=True):
        _places(schema, where, places)
    budget = _Budget(CONVERSION_BUDGET, places)
    token = _BUDGET.set(budget)
    try:
        converter = _bounded_converter()
        for name, schema in copies:
            resolved = converter.resolve_refs(schema, name or "input")
            converter.visit(resolved, name)
        if root is not None:
            converter._rules["root"] = root
        grammar = str(converter.format_grammar())
    except SchemaError:
        raise
    except (AssertionError, ValueError, KeyError, TypeError, IndexError, RecursionError) as exc:
        raise SchemaError(f"the schema cannot be turned into a grammar: {exc}") from None
    finally:
        _BUDGET.reset(token)
    if len(grammar) > MAX_GRAMMAR_BYTES:
        raise SchemaError(f"the schema makes a grammar of {len(grammar)} bytes; at most {MAX_GRAMMAR_BYTES}")
    return grammar


def schema_grammar(schema: dict[str, Any]) -> str:
    """A grammar whose documents are exactly the JSON values valid under `schema`."""
    return _convert([("", schema, "#")], None)


def wrapped_grammar(values: list[tuple[str, dict[str, Any], str]], root: str) -> str:
    """A grammar with one rule per (name, schema, its place) and `root` (GBNF using those
    names) on top.

    Used for tool calls: each name is the JSON of one call; `root` says how the model's format
    wraps them (`"<tool_call>" ... "</tool_call>"`, `"[TOOL_CALLS]" "[" ... "]"`, ...).
    """
    return _convert(values, root)
