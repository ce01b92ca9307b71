"""The compose project of a stack, rendered from the one definition of the services.

`slimllm stack up` does not describe containers of its own: it writes a small compose project
whose services `extends` those of services.yml (the file the repository's docker-compose*.yml
extend too) and adds only what the stack has of its own, then runs `docker compose up`. Secrets
are never written into the project: it names them as `${VARIABLE}`, and compose takes their
values from its own environment.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from slimllm.errors import UserError

SERVICES_FILE = Path(str(resources.files(__package__).joinpath("services.yml")))
LABEL = "io.slimllm.action-stack"
ROLE_LABEL = "io.slimllm.role"
INFERENCE_PORT, CHAT_PORT = 8080, 8000
# Stable names on the stack network, whatever the models are called: the origin that a named
# tunnel's public hostname points at (set once in Cloudflare, the same for every replica) is
# http://chat:8000 with the chat, http://inference:8080 (the first model) without it.
CHAT_ALIAS, INFERENCE_ALIAS = "chat", "inference"


@dataclass(frozen=True)
class Model:
    name: str  # the service name: the model's address on the stack network (http://NAME:8080)
    environment: Mapping[str, str]
    port: int


@dataclass(frozen=True)
class Project:
    name: str
    models: Sequence[Model]
    models_dir: Path
    images: Mapping[str, str]  # service in services.yml -> image reference
    chat_port: int | None  # None: no chat
    tunnel_metrics_port: int | None  # None: no tunnel
    monitor: bool
    threads: int | None = None

    def front(self) -> str:
        """What the tunnel publishes, by its alias: the chat, or the first model."""
        if self.chat_port is not None:
            return f"http://{CHAT_ALIAS}:{CHAT_PORT}"
        return f"http://{INFERENCE_ALIAS}:{INFERENCE_PORT}"

    def front_service(self) -> str:
        return "chat" if self.chat_port is not None else self.models[0].name


def chat_key_variable(model: str) -> str:
    return f"SLIMLLM_CHAT_KEY_{model.upper().replace('-', '_').replace('.', '_')}"


def render(project: Project) -> dict[str, Any]:
    """The compose project as a mapping."""
    name = project.name

    def service(base: str, role: str, **own: Any) -> dict[str, Any]:
        return {
            "extends": {"file": str(SERVICES_FILE), "service": base},
            "image": project.images[base],
            "container_name": f"{name}-{role}",
            "labels": {LABEL: name, ROLE_LABEL: role},
            **own,
        }

    services: dict[str, Any] = {}

    def after(names: list[str]) -> dict[str, Any]:
        return {name: {"condition": "service_healthy"} for name in names}

    def aliases(*names: str) -> dict[str, Any]:
        return {"networks": {"slimllm": {"aliases": list(names)}}}

    for index, model in enumerate(project.models):
        environment = dict(model.environment)
        if "." in model.name:
            # The gateway and the monitor call it by its service name, which the Host check allows
            # only when it has no dot (slimllm.hosts); besides the names the operator lists.
            environment["SLIMLLM_ALLOWED_HOSTS"] = f"{model.name},${{SLIMLLM_ALLOWED_HOSTS:-}}"
        if project.threads:
            environment["SLIMLLM_THREADS"] = str(project.threads)
        services[model.name] = service(
            "inference",
            model.name,
            environment=environment,
            # Fetched on the host (so that the action can cache them), read-only in here.
            volumes=[f"{project.models_dir.resolve()}:/models:ro"],
            ports=[f"127.0.0.1:{model.port}:{INFERENCE_PORT}"],
            **(aliases(INFERENCE_ALIAS) if index == 0 else {}),
        )
    watched = [f"{m.name}=http://{m.name}:{INFERENCE_PORT}/health" for m in project.models]
    if project.chat_port is not None:
        environment = {
            "SLIMLLM_CHAT_MODELS": ";".join(
                f"{m.name}=http://{m.name}:{INFERENCE_PORT}" for m in project.models
            )
        }
        # The chat sends the key the servers ask for; compose fills it in from its environment.
        environment.update({chat_key_variable(m.name): "${SLIMLLM_API_KEY:-}" for m in project.models})
        services["chat"] = service(
            "chat",
            "chat",
            environment=environment,
            ports=[f"127.0.0.1:{project.chat_port}:{CHAT_PORT}"],
            depends_on=after([m.name for m in project.models]),
            **aliases(CHAT_ALIAS),
        )
        watched.append(f"chat=http://chat:{CHAT_PORT}/health")
    if project.tunnel_metrics_port is not None:
        services["tunnel"] = service(
            "tunnel",
            "tunnel",
            # A quick tunnel's origin. A named tunnel (TUNNEL_TOKEN) ignores it: its origin is
            # what its public hostname says in Cloudflare, the same alias.
            environment={"TUNNEL_URL": project.front()},
            # A port of its own on the host: its /ready and the quick tunnel's URL are asked there.
            ports=[f"127.0.0.1::{project.tunnel_metrics_port}"],
            depends_on=after([project.front_service()]),
        )
    if project.monitor:
        services["monitor"] = service(
            "monitor",
            "monitor",
            environment={"MONITOR_TARGETS": " ".join(watched)},
            depends_on=after([target.partition("=")[0] for target in watched]),
        )
    return {
        "name": name,
        "x-rendered-by": f"slimllm stack up, from {SERVICES_FILE}",
        "services": services,
        "networks": {"slimllm": {"name": f"{name}-net", "labels": {LABEL: name}}},
    }


def write(project: Project, directory: Path) -> Path:
    # JSON is YAML too, and needs no YAML library on the runner.
    path = directory / "compose.json"
    path.write_text(json.dumps(render(project), indent=2) + "\n", encoding="utf-8")
    return path


def compose(file: Path, *args: str, timeout: float) -> subprocess.CompletedProcess[str]:
    """`docker compose -f FILE ARGS...` with this process's environment (where the secrets are)."""
    try:
        return subprocess.run(
            ["docker", "compose", "-f", str(file), *args],
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
    except FileNotFoundError:
        raise UserError("the docker CLI is needed to start a stack (docker compose)") from None
    except subprocess.TimeoutExpired:
        raise UserError(f"docker compose {args[0]} did not finish within {timeout:.0f} s") from None


def compose_error(result: subprocess.CompletedProcess[str]) -> str:
    """The line of compose's output that says what went wrong."""
    lines = [line.strip() for line in (result.stderr + result.stdout).splitlines() if line.strip()]
    errors = [line for line in lines if "rror" in line] or lines
    return errors[-1] if errors else f"docker compose exited {result.returncode}"
