"""Model presets: named sets of inference-server settings, and the one place that resolves them.

A preset is an env file (`KEY=value` lines, `#` comments) of `SLIMLLM_*` server settings: a
bundled name (`default`, `phi`, `qwen`, `llama`) or a path to a file of one's own. Wherever a model
is started (`slimllm serve` in a container or on a host, a compose stack, `slimllm stack up`), the
settings it gets come from `resolve`, by these rules:

- what the user gives (a flag or an environment variable) wins over the preset;
- without a preset, a server of the embedded default model gets the `default` preset, so its Gemma
  settings (name, chat format) apply to that model and to no other;
- a preset whose model the user replaced keeps only its general settings (context size, ...): its
  model-bound settings (alias, chat format, template) describe the preset's model, not the user's,
  which is served with what its own GGUF says.
"""

from __future__ import annotations

from collections.abc import Mapping
from importlib import resources
from pathlib import Path

DEFAULT = "default"
# Where a preset's model comes from.
MODEL_KEYS = ("SLIMLLM_MODEL", "SLIMLLM_MODEL_FILE", "SLIMLLM_MODEL_REVISION", "SLIMLLM_MODEL_SHA256")
# Settings that belong to one model: they travel with the preset's model and nowhere else.
MODEL_BOUND_KEYS = ("SLIMLLM_MODEL_ALIAS", "SLIMLLM_CHAT_FORMAT", "SLIMLLM_CHAT_TEMPLATE_FILE")
DEFAULT_MODEL = "default"


class PresetError(ValueError):
    """A preset that cannot be read or used; the message is one line for the user."""


def names() -> list[str]:
    return sorted(
        p.name.removesuffix(".env") for p in resources.files(__name__).iterdir() if p.name.endswith(".env")
    )


def is_file_reference(name: str) -> bool:
    return name.endswith(".env") or "/" in name


def read(name: str) -> dict[str, str]:
    """The settings of a bundled preset or of a preset file, as written (empty values dropped)."""
    if is_file_reference(name):
        try:
            text = Path(name).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            reason = getattr(exc, "strerror", None) or exc
            raise PresetError(f"cannot read preset file {name}: {reason}") from None
    else:
        entry = resources.files(__name__).joinpath(f"{name}.env")
        if not entry.is_file():
            raise PresetError(
                f"unknown preset '{name}'; choose one of {', '.join(names())} or give a path to an .env file"
            )
        text = entry.read_text(encoding="utf-8")
    values: dict[str, str] = {}
    for number, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        key, sep, value = line.partition("=")
        key = key.strip()
        if not sep or not key:
            raise PresetError(f"preset {name}, line {number}: expected KEY=value")
        if not key.startswith("SLIMLLM_"):
            raise PresetError(f"preset {name}, line {number}: {key} is not a SLIMLLM_ setting")
        if value.strip():
            values[key] = value.strip()
    return values


def _model_of(settings: Mapping[str, str]) -> tuple[str, ...]:
    return tuple(settings.get(key, "") for key in MODEL_KEYS[:3])


def resolve(preset: str | None, given: Mapping[str, str]) -> dict[str, str]:
    """The preset settings that apply on top of `given` (the user's own settings, by env name).

    Returns only the keys that `given` does not set; the caller fills those in as defaults.
    """
    given = {key: value for key, value in given.items() if value != ""}
    if not preset:
        if given.get("SLIMLLM_MODEL", DEFAULT_MODEL) != DEFAULT_MODEL or "SLIMLLM_MODEL_FILE" in given:
            return {}
        preset = DEFAULT
    values = read(preset)
    own_model = {key: values[key] for key in MODEL_KEYS if key in values}
    preset_model = _model_of({"SLIMLLM_MODEL": DEFAULT_MODEL, **own_model})
    replaced = _model_of({"SLIMLLM_MODEL": DEFAULT_MODEL, **own_model, **given}) != preset_model
    return {
        key: value
        for key, value in values.items()
        if key not in given and not (replaced and (key in MODEL_BOUND_KEYS or key in MODEL_KEYS))
    }
