"""Build the linux/arm64 inference image and ask it one chat on the real model, under emulation.

On an amd64 machine the container runs through QEMU user mode (scripts/install-qemu.sh), so the
speeds say nothing about real arm64 hardware; what this shows is that the arm64 image builds (its
llama.cpp cross-compiled on the build machine), starts, loads the model and answers. Prints one
JSON document (and writes it with --out): build seconds, image size, the machine the container
reports, start -> healthy seconds, time to first token, tokens, tok/s and the answer, and one
short plain completion.

    python bench/arm64-inference.py --out bench/results/arm64-inference.json

Outside .ci/run: a first build compiles llama.cpp (minutes), and the emulated model is slow.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import httpx

import docker

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import REPO, emit, models_dir, utc_now

from slimllm.model import ModelSource, fetch
from slimllm.runner.images import BakeFile, allow_args

IMAGE = "slimllm/inference:bench-arm64"
PLATFORM = "linux/arm64"
CA_BUNDLE = Path(os.environ.get("SLIMLLM_BUILD_CA", "/etc/ssl/certs/ca-certificates.crt"))
QUESTION = "What is the capital of France? Answer in one sentence."
COMPLETION_PROMPT = "The capital of France is"


def build() -> float:
    """Seconds docker-bake.hcl's inference target for linux/arm64 took (BuildKit's cache counts)."""
    base_images = subprocess.run(
        ["bash", str(REPO / "scripts" / "base-image-args.sh"), PLATFORM],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    ca = str(CA_BUNDLE) if CA_BUNDLE.is_file() else ""
    args = BakeFile(REPO).argv("--progress=plain", *allow_args([ca] if ca else []))
    args += ["--set", f"inference.tags={IMAGE}", "--", "inference"]
    env = {"PLATFORMS": PLATFORM, "BASE_IMAGES": base_images, "PUSH": "false", "CACHE": "none"}
    env["SLIMLLM_BUILD_CA"] = ca
    began = time.monotonic()
    result = subprocess.run(args, cwd=REPO, env={**os.environ, **env}, capture_output=True, text=True)
    if result.returncode != 0:
        sys.exit(f"building {IMAGE} failed:\n{result.stderr[-4000:]}")
    return time.monotonic() - began


def wait_healthy(url: str, container: Any, began: float, timeout: float) -> float:
    while time.monotonic() - began < timeout:
        try:
            if httpx.get(url + "/health", timeout=5).status_code == 200:
                return time.monotonic() - began
        except httpx.HTTPError:
            pass
        container.reload()
        if container.status == "exited":
            break
        time.sleep(0.2)
    sys.exit(f"the server did not become healthy:\n{container.logs().decode()[-3000:]}")


def chat(url: str, max_tokens: int) -> dict[str, Any]:
    body = {
        "messages": [{"role": "user", "content": QUESTION}],
        "max_tokens": max_tokens,
        "temperature": 0,
        "stream": True,
    }
    sent = time.monotonic()
    stamps: list[float] = []
    parts: list[str] = []
    with httpx.stream("POST", url + "/v1/chat/completions", json=body, timeout=900) as response:
        response.raise_for_status()
        for line in response.iter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[6:])
            text = (chunk.get("choices") or [{}])[0].get("delta", {}).get("content")
            if text:
                stamps.append(time.monotonic())
                parts.append(text)
    if not stamps:
        sys.exit("the server streamed no tokens")
    return {
        "ttft_s": round(stamps[0] - sent, 2),
        "tokens": len(stamps),
        "decode_tps": round((len(stamps) - 1) / (stamps[-1] - stamps[0]), 2) if len(stamps) > 1 else None,
        "wall_s": round(stamps[-1] - sent, 2),
        "answer": "".join(parts),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=2, help="SLIMLLM_THREADS of the server")
    parser.add_argument("--max-tokens", type=int, default=48, help="completion tokens at most")
    parser.add_argument("--healthy-timeout", type=float, default=900, help="seconds to wait for /health")
    parser.add_argument("--skip-build", action="store_true", help="use the image already built")
    parser.add_argument("--out", type=Path, help="also write the JSON here")
    args = parser.parse_args(argv)

    build_s = None if args.skip_build else round(build(), 1)
    models = models_dir()
    model = fetch(ModelSource("default"), models)
    client = docker.from_env()
    image = client.images.get(IMAGE)
    if image.attrs["Architecture"] != "arm64":
        sys.exit(f"{IMAGE} is {image.attrs['Architecture']}, not arm64")

    began = time.monotonic()
    container = client.containers.run(
        IMAGE,
        detach=True,
        name=f"bench-arm64-{uuid.uuid4().hex[:6]}",
        # The image's default preset: the embedded Gemma with its chat template, found in /models.
        environment={"SLIMLLM_THREADS": str(args.threads)},
        volumes={str(models): {"bind": "/models", "mode": "ro"}},
        ports={"8080/tcp": ("127.0.0.1", None)},
        read_only=True,
        tmpfs={"/tmp": ""},
    )
    try:
        container.reload()
        while not container.attrs["NetworkSettings"]["Ports"].get("8080/tcp"):
            container.reload()
        port = container.attrs["NetworkSettings"]["Ports"]["8080/tcp"][0]["HostPort"]
        url = f"http://127.0.0.1:{port}"
        healthy_s = round(wait_healthy(url, container, began, args.healthy_timeout), 2)
        code, machine = container.exec_run(["python3", "-c", "import platform; print(platform.machine())"])
        answer = chat(url, args.max_tokens)
        # A plain completion as well: a prompt whose continuation is easy to judge by eye.
        completion = httpx.post(
            url + "/v1/completions",
            json={"prompt": COMPLETION_PROMPT, "max_tokens": 12, "temperature": 0},
            timeout=900,
        ).json()["choices"][0]["text"]
    finally:
        container.remove(force=True)

    result = {
        "date": utc_now(),
        "host": {"machine": platform.machine(), "cores": os.cpu_count(), "kernel": platform.release()},
        "image": IMAGE,
        "image_architecture": image.attrs["Architecture"],
        "image_bytes": image.attrs["Size"],
        "container_machine": machine.decode().strip() if code == 0 else None,
        "emulated": platform.machine() not in ("aarch64", "arm64"),
        "model": model.name,
        "threads": args.threads,
        "build_s": build_s,
        "start_to_healthy_s": healthy_s,
        **answer,
        "completion": COMPLETION_PROMPT + completion,
    }
    emit(result, args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
