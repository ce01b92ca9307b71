"""Which models a stack serves, from the user's words: presets and one Hugging Face model."""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from slimllm import presets
from slimllm.clitypes import split_items
from slimllm.errors import UserError
from slimllm.model import DEFAULT_MODELS_DIR, ModelError, ModelSource, parse_source
from slimllm.runner.compose import CHAT_ALIAS, INFERENCE_ALIAS

_MODEL_NAME = re.compile(r"[a-z0-9][a-z0-9.-]{0,39}")
# A model's name is its service's name on the stack network: not one of the other services', nor
# the alias the first model has there unless it is that model.
_TAKEN_NAMES = (CHAT_ALIAS, "tunnel", "monitor")
_DURATION = re.compile(r"(?:(\d+)h)?(?:(\d+)m)?(?:(\d+)s)?")


@dataclass(frozen=True)
class ModelPlan:
    """One model of the stack: its service name, where its file comes from, and the server
    environment that names it. The server resolves that environment itself (slimllm.presets), so
    a preset is passed by name, exactly as the compose stacks pass it."""

    name: str
    source: ModelSource
    environment: dict[str, str]

    @property
    def cache_key(self) -> str:
        s = self.source
        return f"{s.repo or s.kind}|{s.filename or ''}|{s.revision or 'main'}"


def _source(settings: dict[str, str]) -> ModelSource:
    return parse_source(
        settings.get("SLIMLLM_MODEL"),
        filename=settings.get("SLIMLLM_MODEL_FILE"),
        revision=settings.get("SLIMLLM_MODEL_REVISION"),
        sha256=settings.get("SLIMLLM_MODEL_SHA256"),
    )


def plan_models(
    preset_names: Sequence[str],
    *,
    repo: str | None = None,
    file: str | None = None,
    revision: str | None = None,
    sha256: str | None = None,
    alias: str | None = None,
    chat_format: str | None = None,
) -> list[ModelPlan]:
    plans = []
    known = presets.names()
    for preset in dict.fromkeys(preset_names):
        if preset not in known:
            raise UserError(f"unknown model preset {preset!r}; choose from: {', '.join(known)}")
        try:
            source = _source(presets.resolve(preset, {}))
        except ModelError as exc:
            raise UserError(f"preset {preset}: {exc}") from None
        plans.append(ModelPlan(preset, source, {"SLIMLLM_PRESET": preset}))
    if repo or file:
        if not (repo and file):
            raise UserError("a Hugging Face model needs both model-repo and model-file")
        name = (alias or Path(file).stem).lower()
        name = re.sub(r"[^a-z0-9.-]+", "-", name).strip("-.")[:40] or "model"
        if not _MODEL_NAME.fullmatch(name):
            raise UserError(f"model alias {alias!r} must be lowercase letters, digits, '.' or '-'")
        given = {
            "SLIMLLM_MODEL": repo,
            "SLIMLLM_MODEL_FILE": file,
            "SLIMLLM_MODEL_REVISION": revision or "",
            "SLIMLLM_MODEL_SHA256": sha256 or "",
            # Without these the server takes the GGUF's own: its file name and chat template.
            "SLIMLLM_MODEL_ALIAS": alias or "",
            "SLIMLLM_CHAT_FORMAT": chat_format or "",
        }
        environment = {key: value for key, value in given.items() if value}
        try:
            plans.append(ModelPlan(name, _source(environment), environment))
        except ModelError as exc:
            raise UserError(f"model {name}: {exc}") from None
    if not plans:
        raise UserError("no model to serve: give a preset (e.g., default) or model-repo and model-file")
    names = [plan.name for plan in plans]
    if len(set(names)) != len(names):
        raise UserError(f"two models are named {names[-1]!r}; give the Hugging Face model another alias")
    for index, name in enumerate(names):
        if name in _TAKEN_NAMES or (name == INFERENCE_ALIAS and index > 0):
            raise UserError(
                f"a model cannot be named {name!r}: that name is another service's on the stack network; "
                "give the Hugging Face model another alias"
            )
    return plans


def preset_list(values: str, repo: str | None, file: str | None) -> list[str]:
    """The presets asked for; `default` when neither a preset nor a Hugging Face model is."""
    return split_items([values]) or ([] if repo or file else [presets.DEFAULT])


def models_dir(value: Path | None) -> Path:
    """The models directory given, or one under RUNNER_TEMP on a runner and ./models elsewhere."""
    if value is not None:
        return value
    runner_temp = os.environ.get("RUNNER_TEMP")
    return Path(runner_temp) / "slimllm-models" if runner_temp else DEFAULT_MODELS_DIR


def parse_duration(text: str) -> int:
    """Seconds in `90`, `45s`, `30m`, `5h50m`; 0 for an empty value."""
    text = text.strip()
    if not text:
        return 0
    if text.isdigit():
        return int(text)
    match = _DURATION.fullmatch(text)
    if not match or not any(match.groups()):
        raise UserError(f"duration {text!r} is not a number of seconds or like 30m, 5h50m, 45s")
    hours, minutes, seconds = (int(part or 0) for part in match.groups())
    return hours * 3600 + minutes * 60 + seconds
