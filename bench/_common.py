"""What the benches share: the repository's paths, the models cache, the machine, the JSON they print,
and the streamed chat request whose first token they time.

Imported by the scripts in bench/ (run as `python bench/NAME.py`, so this directory is on sys.path);
importing it also puts the repository's src/ first on sys.path, so that the benches run this
checkout's slimllm rather than whichever one the interpreter has installed.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

import httpx

REPO = Path(__file__).resolve().parent.parent
if str(REPO / "src") not in sys.path:
    sys.path.insert(0, str(REPO / "src"))

# Handed to image builds as the BuildKit secret `ca` when it exists (behind a TLS-intercepting proxy).
CA_BUNDLE = Path("/etc/ssl/certs/ca-certificates.crt")


def models_dir() -> Path:
    """The models cache the tests and benches share (the default model is fetched into it)."""
    return Path(os.environ.get("SLIMLLM_TEST_MODELS_DIR", Path.home() / ".cache/slimllm/test-models"))


def utc_now() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def emit(result: dict[str, Any], out: Path | None) -> None:
    """Print the result as one JSON document and, with `out`, write it there too."""
    text = json.dumps(result, indent=2)
    print(text)
    if out:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(text + "\n")


def chat_ttft(url: str, messages: list[dict[str, str]], tokens: int, cache_prompt: bool = True) -> float:
    """Seconds from sending a streamed chat completion to its first streamed text."""
    body: dict[str, Any] = {
        "messages": messages,
        "max_tokens": tokens,
        "temperature": 0,
        "stream": True,
    }
    if not cache_prompt:
        body["cache_prompt"] = False
    sent = time.monotonic()
    first = None
    with httpx.stream("POST", url + "/v1/chat/completions", json=body, timeout=300) as response:
        response.raise_for_status()
        for line in response.iter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            choices = json.loads(line[6:]).get("choices") or [{}]
            if first is None and choices[0].get("delta", {}).get("content"):
                first = time.monotonic()
    if first is None:
        raise RuntimeError(f"{url} produced no text")
    return first - sent
