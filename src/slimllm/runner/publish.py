"""Whether a stack may be published through a tunnel: the one rule every way of starting one follows.

Publishing fails closed. What the tunnel publishes -- the chat, or the first model's inference
server when there is no chat -- must ask for a key (the chat's SLIMLLM_CHAT_API_KEY, the server's
SLIMLLM_API_KEY), unless `public` (SLIMLLM_PUBLIC=true) says an open endpoint is meant. A key made
up on the runner is no way out: on a public repository there is no safe channel to hand it to
anyone, since the run's logs, summaries and artifacts are open to all. `slimllm stack up` (the
serve action) and `slimllm stack publish-check` (the compose stacks, through make) apply it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Literal

from slimllm.errors import UserError

Front = Literal["chat", "inference"]

PUBLIC_VARIABLE = "SLIMLLM_PUBLIC"
# The variable holding the key that the published service asks for, by what is published.
KEY_VARIABLES: Mapping[Front, str] = {"chat": "SLIMLLM_CHAT_API_KEY", "inference": "SLIMLLM_API_KEY"}
# The same, as the serve action's inputs name it (chat-api-key falls back to api-key there).
KEY_INPUTS: Mapping[Front, str] = {"chat": "chat-api-key or api-key", "inference": "api-key"}
_FRONT_NAMES: Mapping[Front, str] = {"chat": "the chat", "inference": "the inference server"}


def parse_public(value: str | None) -> bool:
    """`public` as given: "true" or "false" (any case; empty is false). Anything else is refused
    rather than guessed at, since a wrong guess could publish an open endpoint."""
    text = (value or "").strip().lower()
    if text in ("", "false"):
        return False
    if text == "true":
        return True
    raise UserError(f"public ({PUBLIC_VARIABLE}) must be true or false, not {value!r}")


def refusal(*, tunnel: bool, front: Front, key: str | None, public: str | None) -> str | None:
    """Why publishing must not go ahead, in one line; None when it may (no tunnel, a key, or
    `public` true). A `public` that is neither true nor false is refused whatever the rest."""
    open_meant = parse_public(public)
    if not tunnel or open_meant or (key or "").strip():
        return None
    return (
        f"refusing to publish {_FRONT_NAMES[front]} through the tunnel without a key: set "
        f"{KEY_VARIABLES[front]} (in .env, or the serve action's {KEY_INPUTS[front]} input from a "
        f'secret), or public: "true" ({PUBLIC_VARIABLE}=true) if an endpoint open to anyone is meant'
    )


def check(*, tunnel: bool, front: Front, key: str | None, public: str | None) -> None:
    """Raise UserError with the refusal, if any."""
    reason = refusal(tunnel=tunnel, front=front, key=key, public=public)
    if reason:
        raise UserError(reason)


def open_warning(front: Front) -> str:
    """What a stack published without a key, as `public` asked, says in the log and the summary."""
    return (
        f"{_FRONT_NAMES[front]} is published through the tunnel without a key ({PUBLIC_VARIABLE}=true): "
        "anyone with the URL can use it"
    )


def compose_refusal(config: Mapping[str, object]) -> str | None:
    """The refusal for a compose stack, from its resolved configuration (`docker compose config`
    with the profiles and .env compose itself reads): its tunnel service, when the profile is on,
    publishes the service its TUNNEL_URL names; the chat (the service with SLIMLLM_CHAT_API_KEY)
    must have that key, an inference server SLIMLLM_API_KEY. An origin that names no service of
    the stack counts as keyless."""
    services = config.get("services")
    services = services if isinstance(services, dict) else {}
    tunnel = services.get("tunnel")
    if not isinstance(tunnel, dict):
        return None
    environment = tunnel.get("environment") or {}
    origin = str(environment.get("TUNNEL_URL") or "")
    host = origin.partition("://")[2].partition("/")[0].partition(":")[0]
    target = services.get(host)
    target_environment = (target.get("environment") if isinstance(target, dict) else None) or {}
    front: Front = "chat" if KEY_VARIABLES["chat"] in target_environment else "inference"
    key = str(target_environment.get(KEY_VARIABLES[front]) or "")
    return refusal(tunnel=True, front=front, key=key, public=environment.get(PUBLIC_VARIABLE))
