"""Any GGUF served right, on every path a user takes to start a model.

The models are the tiny GGUFs of tests/ggufs.py (other architectures than Gemma, with their own
chat templates or none; random weights: what matters is what the server makes of their metadata).
Each path must serve a model under its own name with its own template, and the exact prompt text
the server renders is checked against an independent rendering (tests.ggufs.expected_prompt),
both through /apply-template and in the request path (the prompt's token count in `usage`):

- `docker run` of the image with SLIMLLM_MODEL (no preset: nothing of Gemma's may leak in);
- every compose stack's inference service: docker-compose.inference.yml with a model of one's
  own, the phi, qwen and llama stacks with their presets (the Hub stand-in serves generated
  models under the presets' repos), docker-compose.all.yml behind the chat interface, and the
  default stack, whose embedded Gemma must still get Gemma's template;
- `slimllm stack up` (the serve action) with a preset and a Hugging Face model, behind the chat.

The Hub stand-in is tests/fakes/hf_hub.py on an address containers reach (Hugging Face is out of
reach here).
"""

from __future__ import annotations

import hashlib
import json
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from slimllm import presets
from slimllm.cli import main
from slimllm.runner import compose as stack_compose
from tests.dockerutil import wait_for_http
from tests.fakes.hf_hub import serve_hub
from tests.ggufs import KINDS, expected_prompt
from tests.support import free_port
from tests.test_stack import compose, compose_cli, compose_env  # noqa: F401 (fixture)

pytestmark = pytest.mark.usefixtures("compose_cli")

MESSAGES = [
    {"role": "system", "content": "You answer in one word."},
    {"role": "user", "content": "Name a colour."},
    {"role": "assistant", "content": "Blue."},
    {"role": "user", "content": "Another one?"},
]
OWN_REPO = "acme/Tiny-GGUF"
# Which generated model the Hub stand-in serves under each preset's repo and file.
PRESET_KINDS = {"qwen": "chatml", "llama": "llama3", "phi": "none"}


def served_as(url: str, kind: str, model_id: str, *, chat: str | None = None, name: str = "") -> None:
    """The server at `url` serves `kind` as `model_id` with its own template; through the chat
    gateway at `chat` (under `name`) too."""
    spec = KINDS[kind]
    props = httpx.get(url + "/props", timeout=10).json()
    assert props["model_alias"] == model_id
    assert props["model_name"] == spec.general_name and props["architecture"] == spec.architecture
    if spec.chat_template is None:
        # As llama-server: a model without a template gets chatml, never another model's.
        assert props["chat_template"] == "chatml" and "fallback" in props["chat_template_description"]
    else:
        assert props["chat_template"] == spec.chat_template
        assert props["chat_template_description"] == "Jinja template (GGUF metadata)"
    models = httpx.get(url + "/v1/models", timeout=10).json()["data"]
    assert [(m["id"], m["meta"]["name"]) for m in models] == [(model_id, spec.general_name)]

    expected = expected_prompt(kind, MESSAGES)
    rendered = httpx.post(url + "/apply-template", json={"messages": MESSAGES}, timeout=10)
    assert rendered.status_code == 200, rendered.text
    assert rendered.json()["prompt"] == expected
    # The request path renders the same text: its token count is the expected prompt's.
    add_bos = spec.add_bos and not expected.startswith(spec.bos)
    tokens = httpx.post(url + "/tokenize", json={"content": expected, "add_special": add_bos}, timeout=10)
    count = len(tokens.json()["tokens"])
    body = {"messages": MESSAGES, "max_tokens": 2, "temperature": 0}
    answer = httpx.post(url + "/v1/chat/completions", json={**body, "model": model_id}, timeout=60)
    assert answer.status_code == 200, answer.text
    assert answer.json()["usage"]["prompt_tokens"] == count
    if chat is not None:
        through = httpx.post(chat + "/v1/chat/completions", json={**body, "model": name}, timeout=60)
        assert through.status_code == 200, through.text
        assert through.json()["usage"]["prompt_tokens"] == count


def gemma_served(url: str) -> None:
    """The embedded default keeps Gemma's name and llama.cpp's built-in gemma template."""
    props = httpx.get(url + "/props", timeout=10).json()
    assert props["model_alias"] == "gemma-3-270m" and props["chat_template"] == "gemma"
    prompt = httpx.post(url + "/apply-template", json={"messages": MESSAGES}, timeout=10).json()["prompt"]
    assert prompt.startswith("<start_of_turn>user\nYou answer in one word.")
    assert prompt.endswith("<end_of_turn>\n<start_of_turn>model\n")


# --------------------------------------------------------------------------- the Hub stand-in


@dataclass(frozen=True)
class StandInHub:
    url: str
    # The sha256 of what it serves under each preset's repo and file: a generated model, not the
    # file whose digest the preset may pin, so a stack started on it is told this digest instead.
    preset_sha256: dict[str, str]


@pytest.fixture(scope="module")
def hub(docker_client: Any, generated_models: dict[str, Path]) -> Iterator[StandInHub]:
    """The stand-in Hub on the default bridge's gateway (this host, reachable from containers):
    each preset's repo and file with a generated model, and each generated model under OWN_REPO."""
    files = {f"{OWN_REPO}/{path.name}": path.read_bytes() for path in generated_models.values()}
    for preset, kind in PRESET_KINDS.items():
        values = presets.read(preset)
        key = f"{values['SLIMLLM_MODEL']}/{values['SLIMLLM_MODEL_FILE']}"
        files[key] = generated_models[kind].read_bytes()
    assert len({hashlib.sha256(body).digest() for body in files.values()}) == len(generated_models)
    gateway = docker_client.networks.get("bridge").attrs["IPAM"]["Config"][0]["Gateway"]
    digests = {
        p: hashlib.sha256(generated_models[k].read_bytes()).hexdigest() for p, k in PRESET_KINDS.items()
    }
    with serve_hub(files, host=gateway) as (url, _):
        yield StandInHub(url, digests)


# ----------------------------------------------------------------------------------- docker run


@contextmanager
def container(docker_client: Any, image: str, models: Path, env: dict[str, str]) -> Iterator[str]:
    running = docker_client.containers.run(
        image,
        detach=True,
        environment=env,
        volumes={str(models): {"bind": "/models", "mode": "ro"}},
        ports={"8080/tcp": ("127.0.0.1", None)},
        read_only=True,
        tmpfs={"/tmp": ""},
    )
    try:
        running.reload()
        url = f"http://127.0.0.1:{running.attrs['NetworkSettings']['Ports']['8080/tcp'][0]['HostPort']}"
        try:
            wait_for_http(url + "/health", timeout=60)
        except AssertionError:
            raise AssertionError(running.logs().decode(errors="replace")[-3000:]) from None
        yield url
    finally:
        running.remove(force=True)


@pytest.mark.docker
@pytest.mark.parametrize("kind", sorted(KINDS))
def test_docker_run_serves_the_gguf_as_its_own(
    docker_client: Any, stack_images: dict[str, str], generated_models: dict[str, Path], kind: str
) -> None:
    path = generated_models[kind]
    env = {"SLIMLLM_MODEL": f"/models/{path.name}"}
    image = stack_images["SLIMLLM_INFERENCE_IMAGE"]
    with container(docker_client, image, path.parent, env) as url:
        served_as(url, kind, path.stem)


@pytest.mark.docker
def test_docker_run_of_the_embedded_default_is_still_gemma(
    docker_client: Any, stack_images: dict[str, str], default_model: Path
) -> None:
    with container(docker_client, stack_images["SLIMLLM_INFERENCE_IMAGE"], default_model.parent, {}) as url:
        gemma_served(url)


# ------------------------------------------------------------------------------ compose stacks


@contextmanager
def compose_stack(
    file: str, hub: StandInHub, images: dict[str, str], tmp_path: Path, **env: str
) -> Iterator[dict[str, str]]:
    """A stack file under a project, volume and ports of its own, its servers pointed at the Hub
    stand-in; yields the published URL of each service that publishes one."""
    project = f"any-gguf-{uuid.uuid4().hex[:8]}"
    config = json.loads(compose("-f", file, "config", "--format", "json").stdout)
    servers = {}
    for name, service in config["services"].items():
        preset = service.get("environment", {}).get("SLIMLLM_PRESET")
        if preset:
            servers[name] = {"HF_ENDPOINT": hub.url}
            if preset in hub.preset_sha256:
                servers[name]["SLIMLLM_MODEL_SHA256"] = hub.preset_sha256[preset]
    override = tmp_path / f"{project}.yml"
    override.write_text(json.dumps({"services": {n: {"environment": e} for n, e in servers.items()}}))
    ports = {f"SLIMLLM_PUBLISH_{n}": str(free_port()) for n in ("INFERENCE", "CHAT", "PHI", "QWEN", "LLAMA")}
    full_env = compose_env(SLIMLLM_MODELS_VOLUME=f"{project}-models", **images, **ports, **env)
    files = ["-p", project, "-f", file, "-f", str(override)]
    try:
        up = compose(
            *files,
            "up",
            "--detach",
            "--wait",
            "--wait-timeout",
            "240",
            env=full_env,
            timeout=400,
            check=False,
        )
        logs = compose(*files, "logs", "--no-color", env=full_env, check=False).stdout
        assert up.returncode == 0, f"{up.stdout}{up.stderr}\n{logs[-6000:]}"
        published = json.loads(compose(*files, "config", "--format", "json", env=full_env).stdout)["services"]
        yield {
            name: f"http://127.0.0.1:{service['ports'][0]['published']}"
            for name, service in published.items()
            if service.get("ports")
        }
    finally:
        compose(*files, "down", "--volumes", "--remove-orphans", env=full_env, check=False, timeout=300)


@pytest.mark.docker
@pytest.mark.slow
@pytest.mark.parametrize("preset", sorted(PRESET_KINDS))
def test_each_preset_stack_serves_its_model_with_the_model_template(
    hub: StandInHub, stack_images: dict[str, str], tmp_path: Path, preset: str
) -> None:
    with compose_stack(f"docker-compose.{preset}.yml", hub, stack_images, tmp_path) as urls:
        served_as(urls[preset], PRESET_KINDS[preset], presets.read(preset)["SLIMLLM_MODEL_ALIAS"])


@pytest.mark.docker
@pytest.mark.slow
@pytest.mark.parametrize("kind", sorted(KINDS))
def test_the_inference_stack_serves_a_model_of_ones_own(
    hub: StandInHub,
    stack_images: dict[str, str],
    generated_models: dict[str, Path],
    tmp_path: Path,
    kind: str,
) -> None:
    own = generated_models[kind]
    env = {"SLIMLLM_MODEL": OWN_REPO, "SLIMLLM_MODEL_FILE": own.name}
    with compose_stack("docker-compose.inference.yml", hub, stack_images, tmp_path, **env) as urls:
        served_as(urls["inference"], kind, own.stem)


@pytest.mark.docker
@pytest.mark.slow
def test_every_model_behind_one_chat(hub: StandInHub, stack_images: dict[str, str], tmp_path: Path) -> None:
    """docker-compose.all.yml: Gemma and the three presets, each through the chat gateway."""
    with compose_stack("docker-compose.all.yml", hub, stack_images, tmp_path) as urls:
        gemma_served(urls["inference"])
        for preset, kind in PRESET_KINDS.items():
            alias = presets.read(preset)["SLIMLLM_MODEL_ALIAS"]
            served_as(urls[preset], kind, alias, chat=urls["chat"], name=preset)


# --------------------------------------------------------------------------- slimllm stack up


def step_outputs(path: Path) -> dict[str, str]:
    """GITHUB_OUTPUT read back the way the runner reads it (NAME<<DELIMITER heredocs)."""
    outputs: dict[str, str] = {}
    lines = iter(path.read_text().splitlines())
    for line in lines:
        name, _, delimiter = line.partition("<<")
        value = []
        for item in lines:
            if item == delimiter:
                break
            value.append(item)
        outputs[name] = "\n".join(value)
    return outputs


@pytest.mark.docker
@pytest.mark.slow
@pytest.mark.parametrize("kind", sorted(KINDS))
def test_stack_up_serves_the_default_and_a_hugging_face_model_behind_the_chat(
    hub: StandInHub,
    stack_images: dict[str, str],
    generated_models: dict[str, Path],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    kind: str,
) -> None:
    """The serve action's path. Only the host talks to the Hub: the servers find the files it
    fetched (and the digests it noted) in the read-only models directory."""
    own = generated_models[kind]
    name = f"t-{uuid.uuid4().hex[:8]}"
    outputs = tmp_path / "outputs"
    monkeypatch.setenv("GITHUB_ACTIONS", "true")
    monkeypatch.setenv("GITHUB_OUTPUT", str(outputs))
    monkeypatch.setenv("HF_ENDPOINT", hub.url)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    port, chat_port = free_port(), free_port()
    while chat_port in (port, port + 1):  # the second model takes port + 1
        chat_port = free_port()
    argv = ["stack", "up", "--name", name, "--models", "default", "--model-repo", OWN_REPO, "--model-file",
            own.name, "--models-dir", str(tmp_path / "models"), "--chat", "--no-monitor",
            "--inference-image", stack_images["SLIMLLM_INFERENCE_IMAGE"],
            "--chat-image", stack_images["SLIMLLM_CHAT_IMAGE"],
            "--port", str(port), "--chat-port", str(chat_port)]  # fmt: skip
    try:
        assert main(argv) == 0
        urls = json.loads(step_outputs(outputs)["inference-urls"])
        chat = f"http://127.0.0.1:{chat_port}"
        gemma_served(urls["default"])
        served_as(urls[own.stem], kind, own.stem, chat=chat, name=own.stem)
    finally:
        assert main(["stack", "down", "--name", name]) == 0


# ------------------------------------------------- one definition: compose and the action agree


SAME = ("deploy", "environment", "healthcheck", "read_only", "cap_drop", "security_opt", "restart",
        "stop_grace_period", "tmpfs", "user")  # fmt: skip


def _inference_service(config: dict[str, Any], name: str) -> dict[str, Any]:
    service = config["services"][name]
    picked = {key: service.get(key) for key in SAME}
    # An empty variable is no setting at all for the server (click ignores it).
    picked["environment"] = {k: v for k, v in (service.get("environment") or {}).items() if v}
    return picked


@pytest.mark.parametrize(
    ("file", "service", "preset"),
    [
        pytest.param("docker-compose.yml", "inference", "default", id="default"),
        pytest.param("docker-compose.inference.yml", "inference", "default", id="inference"),
        pytest.param("docker-compose.all.yml", "inference", "default", id="all-gemma"),
        *(pytest.param(f"docker-compose.{p}.yml", p, p, id=p) for p in sorted(PRESET_KINDS)),
        *(pytest.param("docker-compose.all.yml", p, p, id=f"all-{p}") for p in sorted(PRESET_KINDS)),
    ],
)
def test_compose_and_the_action_stack_define_the_inference_service_alike(
    tmp_path: Path, file: str, service: str, preset: str
) -> None:
    project = stack_compose.Project(
        name="same",
        models=[stack_compose.Model(preset, {"SLIMLLM_PRESET": preset}, 8080)],
        models_dir=tmp_path,
        images={"inference": "slimllm/inference:local"},
        chat_port=None,
        tunnel_metrics_port=None,
        monitor=False,
    )
    action = json.loads(
        compose("-f", str(stack_compose.write(project, tmp_path)), "config", "--format", "json").stdout
    )
    stack = json.loads(compose("-f", file, "config", "--format", "json").stdout)
    assert _inference_service(action, preset) == _inference_service(stack, service)
    assert _inference_service(stack, service)["deploy"]["resources"]["limits"]["memory"]
