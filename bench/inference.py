"""Benchmark the slimllm inference image against llama.cpp's llama-server, side by side.

Both run as containers on the same model file with the same thread count; requests alternate
between them so that machine noise hits both alike. Prints one JSON document (and writes it with
--out): single-stream decode tok/s and time to first token, aggregate tok/s for N concurrent
streams, container start -> healthy seconds, /health latency during a generation, image sizes,
and the ratios slimllm / llama-server.

    python bench/inference.py --out bench/results/inference.json
"""

from __future__ import annotations

import argparse
import concurrent.futures
import contextlib
import json
import os
import platform
import statistics
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

import docker

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import CA_BUNDLE, REPO, cpu_model, emit, models_dir, utc_now

from slimllm.model import ModelSource, fetch
from slimllm.runner.images import BakeFile, allow_args

OURS = "slimllm/inference:bench"
PEER = "slimllm/llama-server:bench"
# About 15 tokens with the unique prefix: where a long prompt hides the fixed cost per request.
SHORT_PROMPT = "Tell me a story about a lighthouse."
PROMPT = (
    "You are a helpful assistant. Write a long, detailed story about a lighthouse keeper who finds "
    "a strange machine washed up on the shore, and what happens over the following year."
)


def build_ours(tag: str) -> None:
    """The inference image as docker-bake.hcl defines it, for the engine's platform, tagged `tag`."""
    ca = str(CA_BUNDLE) if CA_BUNDLE.is_file() else ""
    args = BakeFile(REPO).argv("--progress=quiet", *allow_args([ca] if ca else []))
    args += ["--set", f"inference.tags={tag}", "--", "inference"]
    env = {**os.environ, "PLATFORMS": "", "PUSH": "false", "CACHE": "none", "SLIMLLM_BUILD_CA": ca}
    subprocess.run(args, cwd=REPO, env=env, check=True, stdout=subprocess.DEVNULL)


def build_peer(tag: str) -> None:
    """llama-server, the reference (not one of our images, so not in docker-bake.hcl)."""
    args = ["docker", "buildx", "build", "--load", "-q", "-f", str(REPO / "bench/llama-server.Dockerfile")]
    args += ["-t", tag]
    if CA_BUNDLE.exists():
        args += ["--secret", f"id=ca,src={CA_BUNDLE}"]
    subprocess.run([*args, str(REPO)], check=True, stdout=subprocess.DEVNULL)


@dataclass
class Running:
    name: str
    container: Any
    url: str
    start_to_healthy: float


def start(
    client: Any, name: str, image: str, models: Path, model_file: str, threads: int, slots: int, ctx: int
) -> Running:
    if name.startswith("slimllm"):
        kwargs: dict[str, Any] = {
            "environment": {
                "SLIMLLM_PRESET": "",
                "SLIMLLM_MODEL": f"/models/{model_file}",
                "SLIMLLM_THREADS": str(threads),
                "SLIMLLM_SLOTS": str(slots),
                "SLIMLLM_CTX_SIZE": str(ctx),
                "SLIMLLM_LOG_LEVEL": "warning",
            },
            "read_only": True,
            "tmpfs": {"/tmp": ""},
        }
    else:
        kwargs = {
            "command": [
                "-m",
                f"/models/{model_file}",
                "-t",
                str(threads),
                "-tb",
                str(threads),
                "-c",
                str(ctx * slots),
                "-np",
                str(slots),
                "--log-disable",
            ]
        }
    began = time.monotonic()
    container = client.containers.run(
        image,
        detach=True,
        name=f"bench-{name}-{uuid.uuid4().hex[:6]}",
        volumes={str(models): {"bind": "/models", "mode": "ro"}},
        ports={"8080/tcp": ("127.0.0.1", None)},
        **kwargs,
    )
    container.reload()
    while not container.attrs["NetworkSettings"]["Ports"].get("8080/tcp"):
        container.reload()
    port = container.attrs["NetworkSettings"]["Ports"]["8080/tcp"][0]["HostPort"]
    url = f"http://127.0.0.1:{port}"
    while time.monotonic() - began < 120:
        try:
            if httpx.get(url + "/health", timeout=2).status_code == 200:
                return Running(name, container, url, time.monotonic() - began)
        except httpx.HTTPError:
            pass
        time.sleep(0.02)
    raise RuntimeError(f"{name} did not become healthy:\n{container.logs().decode()[-2000:]}")


def stream_once(url: str, tokens: int, prompt: str = PROMPT) -> dict[str, float]:
    # A unique prefix defeats prompt caching, so both servers process the whole prompt every time.
    body = {
        "prompt": f"[{uuid.uuid4().hex[:8]}] {prompt}",
        "max_tokens": tokens,
        "temperature": 0,
        "ignore_eos": True,
        "stream": True,
        "cache_prompt": False,
    }
    sent = time.monotonic()
    stamps: list[float] = []
    with httpx.stream("POST", url + "/v1/completions", json=body, timeout=300) as response:
        response.raise_for_status()
        for line in response.iter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[6:])
            if chunk.get("choices") and chunk["choices"][0].get("text"):
                stamps.append(time.monotonic())
    if len(stamps) < 2:
        raise RuntimeError(f"{url} produced {len(stamps)} tokens")
    return {
        "ttft_s": stamps[0] - sent,
        "decode_tps": (len(stamps) - 1) / (stamps[-1] - stamps[0]),
        "tokens": len(stamps),
        "wall_s": stamps[-1] - sent,
    }


def concurrent_streams(url: str, streams: int, tokens: int) -> float:
    began = time.monotonic()
    with concurrent.futures.ThreadPoolExecutor(streams) as pool:
        results = list(pool.map(lambda _: stream_once(url, tokens), range(streams)))
    return sum(r["tokens"] for r in results) / (time.monotonic() - began)


def health_latency_during_generation(url: str) -> dict[str, float]:
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        job = pool.submit(stream_once, url, 256)
        time.sleep(0.5)
        samples = []
        while not job.done() and len(samples) < 50:
            began = time.monotonic()
            httpx.get(url + "/health", timeout=5)
            samples.append(time.monotonic() - began)
            time.sleep(0.05)
        job.result()
    samples.sort()
    return {
        "p50_ms": 1000 * statistics.median(samples),
        "max_ms": 1000 * samples[-1],
        "samples": len(samples),
    }


def alternating(names: list[str], rounds: int) -> Iterator[str]:
    """Each name once a round, in reverse order every other round, so drift favours none."""
    for i in range(rounds):
        yield from names if i % 2 == 0 else reversed(names)


@contextlib.contextmanager
def side_by_side(
    client: Any, servers: dict[str, str], models: Path, model_file: str, threads: int, slots: int
) -> Iterator[dict[str, Running]]:
    """Both servers started and warmed up; each stays idle while the other is measured."""
    running: dict[str, Running] = {}
    try:
        for name, image in servers.items():
            running[name] = start(client, name, image, models, model_file, threads, slots, 4096)
        for server in running.values():
            stream_once(server.url, 8)  # warm-up, not measured
        yield running
    except BaseException:
        # Say which server failed and how, before its container (and its log) is gone.
        for server in running.values():
            server.container.reload()
            state = server.container.attrs["State"]
            tail = server.container.logs(tail=30).decode(errors="replace")
            status = f"{state['Status']}, exit {state['ExitCode']}, OOM {state['OOMKilled']}"
            print(f"{server.name}: {status}\n{tail}", file=sys.stderr)
        raise
    finally:
        for server in running.values():
            server.container.remove(force=True)


def short_ttft(running: dict[str, Running], rounds: int, slots: int, result: dict[str, Any]) -> None:
    """Time to first token of a short prompt (about 15 tokens), one request at a time."""
    runs: dict[str, list[dict[str, float]]] = {name: [] for name in running}
    for name in alternating(list(running), 2 * rounds):
        runs[name].append(stream_once(running[name].url, 4, SHORT_PROMPT))
    for name in running:
        result[name][f"ttft_short_s_{slots}slots"] = median_of(runs[name], "ttft_s")


def add_server_arguments(parser: argparse.ArgumentParser) -> None:
    """The options every side-by-side bench takes: threads, images, building them, output."""
    parser.add_argument("--threads", type=int, default=2, help="CPU threads for every server")
    parser.add_argument("--skip-build", action="store_true", help="use the images already built")
    parser.add_argument("--ours-image", default=OURS, help=f"tag for our image (default: {OURS})")
    parser.add_argument("--peer-image", default=PEER, help=f"tag for llama-server's (default: {PEER})")
    parser.add_argument("--out", type=Path, help="also write the JSON here")


def prepare(args: argparse.Namespace) -> tuple[Path, Path]:
    """Both images built (unless --skip-build) and the embedded model fetched: (models dir, model)."""
    if not args.skip_build:
        build_ours(args.ours_image)
        build_peer(args.peer_image)
    models = models_dir()
    return models, fetch(ModelSource("default"), models)


def median_of(runs: list[dict[str, float]], key: str) -> float:
    return statistics.median(r[key] for r in runs)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=11, help="single-stream requests per server")
    parser.add_argument("--starts", type=int, default=7, help="container starts per server")
    parser.add_argument("--tokens", type=int, default=128, help="completion tokens per request")
    parser.add_argument(
        "--streams",
        type=lambda text: [int(n) for n in text.split(",")],
        default=[1, 2, 4, 8],
        help="concurrent stream counts for the aggregate test, comma separated (default: 1,2,4,8)",
    )
    parser.add_argument(
        "--aggregate-runs", type=int, default=5, help="runs per stream count, the median is reported"
    )
    parser.add_argument(
        "--slots",
        type=int,
        default=0,
        help="slots of both servers in the aggregate test (default: the stream count)",
    )
    parser.add_argument(
        "--baseline-image",
        help="an earlier build of our image, started and single-stream measured in the same run",
    )
    add_server_arguments(parser)
    args = parser.parse_args(argv)

    models, model = prepare(args)
    client = docker.from_env()
    result: dict[str, Any] = {
        "date": utc_now(),
        "machine": {"cpu": cpu_model(), "cores": os.cpu_count(), "kernel": platform.release()},
        "model": model.name,
        "threads": args.threads,
        "tokens": args.tokens,
        "rounds": args.rounds,
        "streams": args.streams,
        "aggregate_runs": args.aggregate_runs,
    }
    servers = {"slimllm": args.ours_image, "llama_server": args.peer_image}
    # The baseline (say, the image before a change) joins the starts and the single-stream rounds.
    single = {**servers, "slimllm_baseline": args.baseline_image} if args.baseline_image else servers
    for name, image in single.items():
        result[name] = {"image": image, "image_bytes": client.images.get(image).attrs["Size"]}

    # Start -> healthy, alternating between the servers so the model file's page cache and other
    # noise favour neither; the median of --starts starts each.
    starts: dict[str, list[float]] = {name: [] for name in single}
    for name in alternating(list(single), args.starts):
        server = start(client, name, single[name], models, model.name, args.threads, 1, 4096)
        starts[name].append(server.start_to_healthy)
        server.container.remove(force=True)
    for name in single:
        result[name]["start_to_healthy_s"] = statistics.median(starts[name])

    with side_by_side(client, single, models, model.name, args.threads, 1) as running:
        runs: dict[str, list[dict[str, float]]] = {name: [] for name in running}
        for name in alternating(list(running), args.rounds):
            runs[name].append(stream_once(running[name].url, args.tokens))
        short_ttft(running, args.rounds, 1, result)
        for name in running:
            result[name]["decode_tps_1"] = median_of(runs[name], "decode_tps")
            result[name]["ttft_s_1"] = median_of(runs[name], "ttft_s")
            result[name]["health_during_generation"] = health_latency_during_generation(running[name].url)

    # Each stream count on freshly started servers with that many slots (llama-server: -np), side
    # by side with alternating runs, so that drift in the machine's speed (large on a small VM)
    # favours neither.
    for streams in args.streams:
        slots = args.slots or streams
        with side_by_side(client, servers, models, model.name, args.threads, slots) as running:
            if streams == 4:
                short_ttft(running, args.rounds, slots, result)
            samples: dict[str, list[float]] = {name: [] for name in running}
            for name in alternating(list(running), args.aggregate_runs):
                samples[name].append(concurrent_streams(running[name].url, streams, args.tokens))
            for name in running:
                result[name][f"aggregate_tps_{streams}"] = statistics.median(samples[name])
                result[name][f"slots_{streams}"] = slots

    ours, peer = result["slimllm"], result["llama_server"]
    result["ratios"] = {
        "decode_tps_1": ours["decode_tps_1"] / peer["decode_tps_1"],
        "ttft_1": ours["ttft_s_1"] / peer["ttft_s_1"],
        **{
            key.replace("_s_", "_"): ours[key] / peer[key]
            for key in ours
            if key.startswith("ttft_short_s_") and key in peer
        },
        "start_to_healthy": ours["start_to_healthy_s"] / peer["start_to_healthy_s"],
        **{
            f"aggregate_tps_{n}": ours[f"aggregate_tps_{n}"] / peer[f"aggregate_tps_{n}"]
            for n in args.streams
        },
    }
    if args.baseline_image:
        base = result["slimllm_baseline"]
        result["ratios_vs_baseline"] = {
            "decode_tps_1": ours["decode_tps_1"] / base["decode_tps_1"],
            "ttft_1": ours["ttft_s_1"] / base["ttft_s_1"],
            "start_to_healthy": ours["start_to_healthy_s"] / base["start_to_healthy_s"],
        }
    emit(result, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
