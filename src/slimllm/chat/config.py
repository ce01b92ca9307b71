"""Which models the chat interface offers and where their instances are.

Two sources, which may be combined: a spec string (`SLIMLLM_CHAT_MODELS`),

    gemma=http://inference-1:8080,http://inference-2:8080;phi=https://phi.example.org

and a JSON file (`SLIMLLM_CHAT_MODELS_FILE`) that can also name the backend's model id and the
environment variable holding the model's API key:

    {"models": {"phi": {"urls": ["https://phi.example.org"], "model": "phi-3-mini",
                        "api_key_env": "PHI_API_KEY"}}}

API keys come only from the environment (`SLIMLLM_CHAT_KEY_<NAME>` by default), never from a
command line or the file itself, so they never show up in `ps`, in logs or in a committed file.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
_FILE_KEYS = {"urls", "model", "api_key_env"}
KEY_ENV_PREFIX = "SLIMLLM_CHAT_KEY_"


class ConfigError(ValueError):
    """A configuration mistake; the message is one line naming the culprit."""


@dataclass(frozen=True)
class ModelConfig:
    name: str
    urls: tuple[str, ...]
    # Kept out of repr so that a logged or printed config never shows the key.
    api_key: str | None = field(default=None, repr=False)
    # The id the backend expects in `model`; None: ask the backend (its /v1/models).
    upstream_model: str | None = None


def key_env_name(model: str) -> str:
    """`SLIMLLM_CHAT_KEY_<NAME>`: the name upper-cased, other characters than A-Z0-9 as `_`."""
    return KEY_ENV_PREFIX + re.sub(r"[^A-Z0-9]", "_", model.upper())


def check_name(name: str, where: str) -> str:
    if not _NAME.fullmatch(name):
        raise ConfigError(
            f"{where}: model name '{name}' must be 1-64 letters, digits, '.', '_' or '-', "
            "starting with a letter or digit"
        )
    return name


def check_url(url: str, where: str) -> str:
    """A backend's base URL (scheme, host, optional port and path prefix), without a trailing /."""
    url = url.strip()
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 # raises ValueError for a port that is not a number
    except ValueError as exc:
        raise ConfigError(f"{where}: '{url}' is not a valid URL ({exc})") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(f"{where}: '{url}' must be an http:// or https:// URL with a host")
    if parts.username or parts.password:
        raise ConfigError(
            f"{where}: '{parts.hostname}' has credentials in its URL; put the API key in "
            "the environment instead (see SLIMLLM_CHAT_KEY_<NAME>)"
        )
    if parts.query or parts.fragment:
        raise ConfigError(f"{where}: '{url}' must not have a query or a fragment")
    base = url.rstrip("/")
    if base.endswith("/v1"):
        raise ConfigError(
            f"{where}: give the server's base URL without /v1 ('{base[:-3]}'); "
            "/v1/chat/completions and /health are appended to it"
        )
    return base


def _api_key(name: str, env: Mapping[str, str], variable: str | None) -> str | None:
    if variable is None:
        return env.get(key_env_name(name), "").strip() or None
    value = env.get(variable, "").strip()
    if not value:
        raise ConfigError(f"model '{name}': its API key variable {variable} is not set or empty")
    return value


def parse_spec(spec: str, env: Mapping[str, str]) -> list[ModelConfig]:
    """`name=url[,url...]` entries separated by `;` (newlines also separate entries)."""
    models: list[ModelConfig] = []
    for raw in re.split(r"[;\n]", spec):
        entry = raw.strip()
        if not entry:
            continue
        name, sep, urls = entry.partition("=")
        if not sep:
            raise ConfigError(f"model spec '{entry}': expected name=url[,url...]")
        name = check_name(name.strip(), "model spec")
        bases = [check_url(u, f"model '{name}'") for u in urls.split(",") if u.strip()]
        if not bases:
            raise ConfigError(f"model '{name}': no URL given (expected {name}=http://host:port)")
        models.append(ModelConfig(name, _unique(bases, name), _api_key(name, env, None)))
    return models


def load_file(path: Path, env: Mapping[str, str]) -> list[ModelConfig]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"cannot read models file {path}: {exc.strerror or exc}") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ConfigError(f"models file {path} is not valid JSON: {exc}") from None
    if not isinstance(data, dict) or set(data) != {"models"} or not isinstance(data["models"], dict):
        raise ConfigError(f'models file {path}: expected {{"models": {{"<name>": {{"urls": [...]}}}}}}')
    models: list[ModelConfig] = []
    for name, entry in data["models"].items():
        where = f"models file {path}, model '{name}'"
        check_name(name, f"models file {path}")
        if not isinstance(entry, dict):
            raise ConfigError(f'{where}: expected an object like {{"urls": ["http://host:8080"]}}')
        unknown = set(entry) - _FILE_KEYS
        if unknown:
            raise ConfigError(f"{where}: unknown key(s) {', '.join(sorted(unknown))}")
        urls = entry.get("urls")
        if not isinstance(urls, list) or not urls or not all(isinstance(u, str) for u in urls):
            raise ConfigError(f"{where}: 'urls' must be a non-empty list of URLs")
        upstream = _optional_string(entry, "model", where)
        key_variable = _optional_string(entry, "api_key_env", where)
        bases = [check_url(u, where) for u in urls]
        models.append(ModelConfig(name, _unique(bases, name), _api_key(name, env, key_variable), upstream))
    return models


def load_models(spec: str | None, file: Path | None, env: Mapping[str, str]) -> list[ModelConfig]:
    """The models of the spec string, then those of the file; at least one, each name once."""
    models = [*parse_spec(spec or "", env), *(load_file(file, env) if file else [])]
    if not models:
        raise ConfigError(
            "no models configured: set SLIMLLM_CHAT_MODELS (e.g., gemma=http://127.0.0.1:8080) "
            "or SLIMLLM_CHAT_MODELS_FILE"
        )
    seen: set[str] = set()
    for model in models:
        if model.name in seen:
            raise ConfigError(f"model '{model.name}' is configured twice")
        seen.add(model.name)
    return models


def _optional_string(entry: dict[str, Any], key: str, where: str) -> str | None:
    value = entry.get(key)
    if value is not None and (not isinstance(value, str) or not value.strip()):
        raise ConfigError(f"{where}: '{key}' must be a non-empty string")
    return value.strip() if value else None


def _unique(urls: list[str], name: str) -> tuple[str, ...]:
    if len(set(urls)) != len(urls):
        raise ConfigError(f"model '{name}': the same URL is listed twice")
    return tuple(urls)
