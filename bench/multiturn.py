"""Multi-turn chat: time to first token per turn, with a growing history, side by side.

Three containers on the same model file and thread count, one slot each: slimllm with prompt-prefix
reuse (the default), slimllm with `cache_prompt: false` on every request, and llama.cpp's
llama-server (its own prompt cache on, as by default). Each conversation has TURNS user turns; the
assistant's answers in the history are fixed text, so every server sees the same prompts, and each
turn streams a few tokens and times the first. Conversations alternate between the servers (in
reverse order every other round) and each starts with a unique tag, so no server reuses an older
conversation. Prints one JSON document (and writes it with --out): the median time to first token
per turn and server, and the ratios slimllm / llama-server and slimllm without / with reuse.

    python bench/multiturn.py --out bench/results/multiturn.json
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import uuid
from pathlib import Path
from typing import Any

import docker

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import chat_ttft, cpu_model, emit, utc_now
from inference import Running, add_server_arguments, alternating, prepare, start

QUESTIONS = [
    "I keep a lighthouse on a small island. Describe what my day looks like in winter.",
    "What supplies should I keep in stock for a storm that lasts a week?",
    "A strange machine washed up on the shore this morning. How should I examine it safely?",
    "It hums when the lamp turns. What could explain that?",
    "Write a short log entry about the machine for the harbour master.",
    "The machine started printing numbers. How could I find out what they mean?",
    "Summarise everything that happened so far in three sentences.",
    "What should I do tomorrow?",
]
# A fixed answer of about 150 tokens after every turn: the history grows by the same text everywhere.
ANSWER = (
    "Here is what I would do, step by step. First, keep a written record of everything you see, "
    "with the time, the weather and the state of the sea, because details that look unimportant "
    "now often explain things later. Second, check the lamp, the lens and the clockwork that turns "
    "them, and make sure the spare mantles, the fuel and the batteries for the radio are where "
    "you expect them. Third, walk the shore at low tide and note anything new: wreckage, rope, "
    "marks in the sand or changes in the rocks. Fourth, report to the harbour master on the radio "
    "at the usual hour, even when there is nothing to report, so that a missed call means "
    "something. Finally, rest when you can: a tired keeper makes mistakes, and the light matters "
    "most on the longest nights."
)


def conversation(url: str, turns: int, tokens: int, cache_prompt: bool) -> list[float]:
    messages: list[dict[str, str]] = []
    tag = uuid.uuid4().hex[:8]
    times = []
    for turn in range(turns):
        question = QUESTIONS[turn % len(QUESTIONS)]
        messages.append({"role": "user", "content": f"[{tag}] {question}" if turn == 0 else question})
        times.append(chat_ttft(url, messages, tokens, cache_prompt))
        messages.append({"role": "assistant", "content": ANSWER})
    return times


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--turns", type=int, default=8, help="user turns per conversation (at least 6)")
    parser.add_argument("--rounds", type=int, default=3, help="conversations per server")
    parser.add_argument("--tokens", type=int, default=8, help="completion tokens per turn")
    add_server_arguments(parser)
    args = parser.parse_args(argv)

    models, model = prepare(args)
    client = docker.from_env()
    # name -> (image, cache_prompt)
    servers = {
        "slimllm": (args.ours_image, True),
        "slimllm_no_reuse": (args.ours_image, False),
        "llama_server": (args.peer_image, True),
    }
    running: dict[str, Running] = {}
    times: dict[str, list[list[float]]] = {name: [] for name in servers}
    try:
        for name, (image, _) in servers.items():
            running[name] = start(client, name, image, models, model.name, args.threads, 1, 4096)
        for name, (_, cache) in servers.items():
            conversation(running[name].url, 2, 4, cache)  # warm-up, not measured
        for name in alternating(list(servers), args.rounds):
            times[name].append(conversation(running[name].url, args.turns, args.tokens, servers[name][1]))
    finally:
        for server in running.values():
            server.container.remove(force=True)

    per_turn = {
        name: [statistics.median(run[t] for run in runs) for t in range(args.turns)]
        for name, runs in times.items()
    }
    ours, plain, peer = per_turn["slimllm"], per_turn["slimllm_no_reuse"], per_turn["llama_server"]
    result: dict[str, Any] = {
        "date": utc_now(),
        "machine": {"cpu": cpu_model(), "cores": os.cpu_count(), "load": os.getloadavg()[0]},
        "model": model.name,
        "threads": args.threads,
        "turns": args.turns,
        "rounds": args.rounds,
        "ttft_s": per_turn,
        "ratios": {
            "slimllm_vs_llama_server": [o / p for o, p in zip(ours, peer, strict=True)],
            "no_reuse_vs_reuse": [n / o for n, o in zip(plain, ours, strict=True)],
        },
    }
    ratios = result["ratios"]["slimllm_vs_llama_server"]
    result["acceptance"] = {
        "from_turn_3_at_most_1.1x_llama_server": all(r <= 1.1 for r in ratios[2:]),
        "last_turn_reuse_at_least_3x": result["ratios"]["no_reuse_vs_reuse"][-1] >= 3,
    }
    emit(result, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
