"""`slimllm images build`: build slimllm's images with `docker buildx`, as the build action does.

The catalog below is the one place that knows where each image's Dockerfile and context are; the
compose files name the same folders. Every value that reaches `docker buildx build` is checked
first and passed as its own argument (never through a shell), and secret values travel in the
environment of the build, never on its command line.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import click

from slimllm import gha
from slimllm.clitypes import LINE, parse_pairs, split_items
from slimllm.errors import UserError


@dataclass(frozen=True)
class ImageSpec:
    name: str
    context: str
    dockerfile: str
    what: str


CATALOG: dict[str, ImageSpec] = {
    spec.name: spec
    for spec in (
        ImageSpec("inference", ".", "app/inference/Dockerfile", "the inference server (llama-cpp-python)"),
        ImageSpec("chat-interface", ".", "app/chat-interface/Dockerfile", "the chat page and its API"),
        ImageSpec("cloudflared", "docker/cloudflared", "docker/cloudflared/Dockerfile", "the tunnel sidecar"),
        ImageSpec(
            "health-monitor",
            "docker/health-monitor",
            "docker/health-monitor/Dockerfile",
            "the monitor sidecar",
        ),
        ImageSpec(
            "model-init", "docker/model-init", "docker/model-init/Dockerfile", "the model volume filler"
        ),
    )
}
CACHE_BACKENDS = ("none", "gha", "registry", "local")
DEFAULT_REGISTRY = "slimllm"
# A builder that can export caches; BuildKit's classic `docker` driver cannot.
CACHE_BUILDER = "slimllm-cache-builder"

_PLATFORM = re.compile(r"linux/(amd64|arm64|arm/v7|arm/v6|386|ppc64le|s390x|riscv64)")
_TAG = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}")
# host[:port]/path or a bare path of lowercase components, as the distribution spec allows.
_REGISTRY = re.compile(
    r"([a-z0-9]([a-z0-9-]*[a-z0-9])?(\.[a-z0-9]([a-z0-9-]*[a-z0-9])?)*(:[0-9]{1,5})?/)?"
    r"[a-z0-9]+([._-][a-z0-9]+)*(/[a-z0-9]+([._-][a-z0-9]+)*)*"
)
_ARG_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_SECRET_ID = re.compile(r"[A-Za-z0-9_.-]{1,64}")


@dataclass
class BuildPlan:
    """What to build and how; made from the user's words by `plan_build`, which checks them."""

    images: list[ImageSpec]
    platforms: list[str]
    push: bool
    registry: str
    tags: list[str]
    cache: str
    cache_dir: Path | None = None
    build_args: dict[str, str] = field(default_factory=dict)
    secret_files: dict[str, Path] = field(default_factory=dict)
    # id -> value; kept out of repr so that a printed plan never shows one.
    secrets: dict[str, str] = field(default_factory=dict, repr=False)
    labels: dict[str, str] = field(default_factory=dict)

    def refs(self, image: ImageSpec, platform: str | None = None) -> list[str]:
        suffix = f"-{platform.removeprefix('linux/').replace('/', '')}" if platform else ""
        return [f"{self.registry}/{image.name}:{tag}{suffix}" for tag in self.tags]


def plan_build(
    *,
    images: Sequence[str],
    platforms: Sequence[str],
    push: bool,
    registry: str,
    tags: Sequence[str],
    cache: str,
    cache_dir: Path | None,
    build_args: Sequence[str],
    secret_files: Sequence[str],
    secrets: Sequence[str],
    environ: Mapping[str, str] = os.environ,
) -> BuildPlan:
    names = split_items(images) or ["all"]
    if "all" in names:
        names = list(CATALOG)
    unknown = [name for name in names if name not in CATALOG]
    if unknown:
        raise UserError(f"unknown image {unknown[0]!r}; choose from: all, {', '.join(CATALOG)}")
    chosen = [CATALOG[name] for name in dict.fromkeys(names)]

    platform_list = list(dict.fromkeys(split_items(platforms)))
    for platform in platform_list:
        if not _PLATFORM.fullmatch(platform):
            raise UserError(
                f"platform {platform!r} is not one of linux/amd64, linux/arm64, ... (e.g., linux/arm64)"
            )

    registry = registry.strip().rstrip("/") or DEFAULT_REGISTRY
    if not _REGISTRY.fullmatch(registry):
        raise UserError(
            f"registry {registry!r} is not a registry and namespace (e.g., registry.example.com/acme)"
        )
    if push and registry == DEFAULT_REGISTRY:
        raise UserError("push needs a registry to push to (e.g., registry.example.com/acme)")

    tag_list = list(dict.fromkeys(split_items(tags))) or ["local"]
    for tag in tag_list:
        if not _TAG.fullmatch(tag):
            raise UserError(
                f"tag {tag!r} is not a valid image tag (letters, digits, '_', '.', '-'; at most 128)"
            )

    if cache not in CACHE_BACKENDS:
        raise UserError(f"cache {cache!r} is not one of {', '.join(CACHE_BACKENDS)}")
    if cache == "local" and cache_dir is None:
        raise UserError("cache local needs a cache directory (e.g., /tmp/buildx-cache)")
    if cache == "registry" and registry == DEFAULT_REGISTRY:
        raise UserError(
            "cache registry needs a registry to keep the cache in (e.g., registry.example.com/acme)"
        )
    if cache == "gha" and not (environ.get("ACTIONS_RUNTIME_TOKEN") and environ.get("ACTIONS_CACHE_URL")):
        raise UserError(
            "cache gha needs the Actions cache service (ACTIONS_RUNTIME_TOKEN and ACTIONS_CACHE_URL): "
            "run it on GitHub Actions through the build action, or choose another cache"
        )

    files: dict[str, Path] = {}
    for secret_id, path in parse_pairs(secret_files, "secret-files", _SECRET_ID).items():
        file = Path(path).expanduser()
        if not file.is_file():
            raise UserError(f"secret-files: {secret_id}: no file at {path}")
        files[secret_id] = file
    values = parse_pairs(secrets, "secrets", _SECRET_ID)
    for value in values.values():
        gha.mask(value)
    clash = set(files) & set(values)
    if clash:
        raise UserError(f"secret {sorted(clash)[0]!r} is given both as a value and as a file")

    return BuildPlan(
        images=chosen,
        platforms=platform_list,
        push=push,
        registry=registry,
        tags=tag_list,
        cache=cache,
        cache_dir=cache_dir,
        build_args=parse_pairs(build_args, "build-args", _ARG_NAME),
        secret_files=files,
        secrets=values,
        labels=_source_labels(environ),
    )


def _source_labels(environ: Mapping[str, str]) -> dict[str, str]:
    """OCI labels that tie an image built on GitHub Actions to its repository and commit."""
    labels = {}
    server, repo, sha = (environ.get(k, "") for k in ("GITHUB_SERVER_URL", "GITHUB_REPOSITORY", "GITHUB_SHA"))
    if server and repo:
        labels["org.opencontainers.image.source"] = f"{server}/{repo}"
    if sha:
        labels["org.opencontainers.image.revision"] = sha
    return labels


@dataclass(frozen=True)
class BuildStep:
    """One `docker buildx build` run: an image for one platform, or for all of them when pushing."""

    image: ImageSpec
    platforms: tuple[str, ...]
    refs: tuple[str, ...]
    argv: tuple[str, ...]
    env: Mapping[str, str]
    metadata: Path  # where buildx writes the digest (--metadata-file)


def build_steps(
    plan: BuildPlan, root: Path, metadata_dir: Path, builder: str | None = None
) -> list[BuildStep]:
    """The buildx runs for a plan.

    Pushing builds every platform in one run (one multi-platform manifest). Loading into the local
    engine takes one platform at a time, so several platforms become one run each, tagged with
    the architecture appended (`local-arm64`).
    """
    steps: list[BuildStep] = []
    for image in plan.images:
        if plan.push or len(plan.platforms) <= 1:
            groups: list[tuple[tuple[str, ...], list[str]]] = [(tuple(plan.platforms), plan.refs(image))]
        else:
            groups = [((p,), plan.refs(image, p)) for p in plan.platforms]
        for platforms, refs in groups:
            argv = ["docker", "buildx", "build", "--progress=plain"]
            if builder:
                argv += ["--builder", builder]
            argv += ["--file", str(root / image.dockerfile)]
            for ref in refs:
                argv += ["--tag", ref]
            if platforms:
                argv += ["--platform", ",".join(platforms)]
            argv.append("--push" if plan.push else "--load")
            argv += _cache_args(plan, image, platforms)
            for name, value in plan.build_args.items():
                argv += ["--build-arg", f"{name}={value}"]
            for name, value in plan.labels.items():
                argv += ["--label", f"{name}={value}"]
            env: dict[str, str] = {}
            for secret_id, path in plan.secret_files.items():
                argv += ["--secret", f"id={secret_id},src={path}"]
            for n, secret_id in enumerate(plan.secrets):
                variable = f"SLIMLLM_BUILD_SECRET_{n}"
                env[variable] = plan.secrets[secret_id]
                argv += ["--secret", f"id={secret_id},env={variable}"]
            metadata = metadata_dir / f"{image.name}-{len(steps)}.json"
            argv += ["--metadata-file", str(metadata), str(root / image.context)]
            steps.append(BuildStep(image, platforms, tuple(refs), tuple(argv), env, metadata))
    return steps


def _cache_args(plan: BuildPlan, image: ImageSpec, platforms: tuple[str, ...]) -> list[str]:
    # One cache per image and platform set, so that builds do not evict each other's layers.
    scope = f"{image.name}-{'-'.join(p.replace('/', '') for p in platforms) or 'default'}"
    if plan.cache == "gha":
        return ["--cache-from", f"type=gha,scope={scope}", "--cache-to", f"type=gha,mode=max,scope={scope}"]
    if plan.cache == "registry":
        ref = f"{plan.registry}/{image.name}:buildcache-{scope}"
        return ["--cache-from", f"type=registry,ref={ref}", "--cache-to", f"type=registry,ref={ref},mode=max"]
    if plan.cache == "local":
        assert plan.cache_dir is not None
        path = plan.cache_dir / scope
        return ["--cache-from", f"type=local,src={path}", "--cache-to", f"type=local,dest={path},mode=max"]
    return []


def _builder_for(plan: BuildPlan) -> str | None:
    """A builder that can export the chosen cache: the current one, or one made for it."""
    if plan.cache == "none":
        return None
    current = subprocess.run(
        ["docker", "buildx", "inspect"], capture_output=True, text=True, timeout=120, check=False
    )
    if current.returncode == 0 and not re.search(r"(?m)^Driver:\s+docker\s*$", current.stdout):
        return None
    exists = subprocess.run(
        ["docker", "buildx", "inspect", CACHE_BUILDER],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    if exists.returncode != 0:
        gha.notice(
            f"creating the docker-container builder {CACHE_BUILDER}: the docker driver cannot export caches"
        )
        made = subprocess.run(
            ["docker", "buildx", "create", "--name", CACHE_BUILDER, "--driver", "docker-container"],
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
        if made.returncode != 0:
            raise UserError(
                f"cannot create a buildx builder for the {plan.cache} cache: {made.stderr.strip()}"
            )
    return CACHE_BUILDER


def _digest(metadata_file: Path) -> str:
    try:
        data = json.loads(metadata_file.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return ""
    return str(data.get("containerimage.digest") or data.get("containerimage.config.digest") or "")


def _local_size(ref: str) -> int | None:
    result = subprocess.run(
        ["docker", "image", "inspect", "--format", "{{.Size}}", ref],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    return int(result.stdout.strip()) if result.returncode == 0 and result.stdout.strip().isdigit() else None


@dataclass
class Built:
    step: BuildStep
    seconds: float
    digest: str
    size: int | None


def run_build(plan: BuildPlan, root: Path) -> list[Built]:
    builder = _builder_for(plan)
    built = []
    with tempfile.TemporaryDirectory(prefix="slimllm-build-") as tmp:
        for step in build_steps(plan, root, Path(tmp), builder):
            title = f"build {step.image.name}" + (f" ({', '.join(step.platforms)})" if step.platforms else "")
            with gha.group(title):
                started = time.monotonic()
                # Output streams straight to the log; the secrets are in `env`, never in argv.
                result = subprocess.run(step.argv, env={**os.environ, **step.env}, check=False)
                seconds = time.monotonic() - started
            if result.returncode != 0:
                raise UserError(
                    f"{title} failed (docker buildx exit status {result.returncode}); see the log above"
                )
            size = None if plan.push else _local_size(step.refs[0])
            built.append(Built(step, seconds, _digest(step.metadata), size))
    return built


def render_build_markdown(built: Sequence[Built]) -> str:
    from slimllm.reports.render import code, format_bytes, table

    rows = [
        [
            b.step.image.name,
            "<br>".join(code(ref) for ref in b.step.refs),
            ", ".join(b.step.platforms) or "engine default",
            code(b.digest.removeprefix("sha256:")[:12]) if b.digest else "",
            format_bytes(b.size) if b.size is not None else "pushed",
            f"{b.seconds:.0f} s",
        ]
        for b in built
    ]
    return "### Images built\n\n" + table(
        ["image", "refs", "platforms", "digest", "size", "time"], "lllllr", rows
    )


@click.group()
def images() -> None:
    """Build slimllm's images (what the build action runs)."""


@images.command("build")
@click.argument("names", nargs=-1, envvar="SLIMLLM_IMAGES", metavar="[IMAGE]...")
@click.option(
    "--platforms",
    envvar="SLIMLLM_PLATFORMS",
    show_envvar=True,
    default="",
    help="Target platforms, comma separated (e.g., linux/amd64,linux/arm64); default: the engine's.",
)
@click.option(
    "--push/--load",
    default=False,
    envvar="SLIMLLM_PUSH",
    show_envvar=True,
    help="Push to the registry instead of loading into the local engine.",
)
@click.option(
    "--registry",
    envvar="SLIMLLM_REGISTRY",
    show_envvar=True,
    default=DEFAULT_REGISTRY,
    help="Registry and namespace the images are named under (e.g., registry.example.com/acme).",
)
@click.option(
    "--tags",
    envvar="SLIMLLM_TAGS",
    show_envvar=True,
    default="local",
    help="Tags, comma separated (e.g., latest,v1.2.0).",
)
@click.option(
    "--cache",
    type=click.Choice(CACHE_BACKENDS),
    envvar="SLIMLLM_CACHE",
    show_envvar=True,
    default="none",
    help="Build cache backend; gha, registry and local use a docker-container builder.",
)
@click.option(
    "--cache-dir",
    type=click.Path(file_okay=False, path_type=Path),
    envvar="SLIMLLM_CACHE_DIR",
    show_envvar=True,
    help="Directory of the local cache.",
)
@click.option(
    "--build-arg",
    "build_args",
    type=LINE,
    multiple=True,
    envvar="SLIMLLM_BUILD_ARGS",
    show_envvar=True,
    help="NAME=VALUE, repeatable (env var: one per line). Visible in the image history: no secrets.",
)
@click.option(
    "--secret-file",
    "secret_files",
    type=LINE,
    multiple=True,
    envvar="SLIMLLM_SECRET_FILES",
    show_envvar=True,
    help="ID=PATH of a BuildKit secret, repeatable (env var: one per line; e.g., ca=/etc/ssl/certs/ca.pem).",
)
@click.option(
    "--root",
    type=click.Path(file_okay=False, exists=True, path_type=Path),
    default=".",
    envvar="SLIMLLM_SOURCE_DIR",
    show_envvar=True,
    help="The slimllm source tree to build from.",
)
def images_build(
    names: tuple[str, ...],
    platforms: str,
    push: bool,
    registry: str,
    tags: str,
    cache: str,
    cache_dir: Path | None,
    build_args: tuple[str, ...],
    secret_files: tuple[str, ...],
    root: Path,
) -> None:
    """Build IMAGEs (env var: SLIMLLM_IMAGES; default: all) with docker buildx.

    Images: all, inference, chat-interface, cloudflared, health-monitor, model-init. They are named
    REGISTRY/IMAGE:TAG; loading several platforms into the local engine gives one image per platform,
    tagged TAG-ARCH. BuildKit secrets with inline values come from SLIMLLM_SECRETS (ID=VALUE lines,
    environment only, masked). Step outputs: images (the first ref of each build, space separated),
    refs, digests and sizes (JSON objects keyed by image name).
    """
    plan = plan_build(
        images=names,
        platforms=[platforms],
        push=push,
        registry=registry,
        tags=[tags],
        cache=cache,
        cache_dir=cache_dir,
        build_args=build_args,
        secret_files=secret_files,
        secrets=[os.environ.get("SLIMLLM_SECRETS", "")],
    )
    root = root.resolve()
    missing = [spec.dockerfile for spec in plan.images if not (root / spec.dockerfile).is_file()]
    if missing:
        raise UserError(f"{root} is not a slimllm source tree: no {missing[0]}")
    built = run_build(plan, root)
    gha.append_summary(render_build_markdown(built))
    refs: dict[str, list[str]] = {}
    digests: dict[str, str] = {}
    sizes: dict[str, int] = {}
    for b in built:
        refs.setdefault(b.step.image.name, []).extend(b.step.refs)
        digests.setdefault(b.step.image.name, b.digest)
        if b.size is not None:
            sizes.setdefault(b.step.image.name, b.size)
    first_refs = " ".join(b.step.refs[0] for b in built)
    click.echo(first_refs)
    if gha.in_github():
        gha.set_outputs(
            {
                "images": first_refs,
                "refs": json.dumps(refs),
                "digests": json.dumps(digests),
                "sizes": json.dumps(sizes),
            }
        )
