"""`slimllm images build`: build slimllm's images with `docker buildx bake`, as the build action does.

docker-bake.hcl at the root of the source tree is the one definition of the builds (targets,
Dockerfiles, contexts, platforms, tags, caches, the CA secret), shared with the Makefile and the
tests; this module reads it through `docker buildx bake --print` and keeps no catalog of its own.
What it adds is the checking: every value the user gives is checked before it reaches bake, and
is passed as a bake variable in the environment or as one `--set` argument of its own (never
through a shell). Secret values travel in the environment of the build, never on its command line.
"""

from __future__ import annotations

import functools
import json
import os
import re
import subprocess
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import click

from slimllm import gha
from slimllm.clitypes import LINE, parse_pairs, split_items
from slimllm.errors import UserError
from slimllm.runner import released

F = TypeVar("F", bound=Callable[..., Any])

BAKE_FILE = "docker-bake.hcl"
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
# A bake target or group name.
_TARGET = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,63}")
# The variables that decide which targets the bake file has and what they are named; fixed while
# reading its images and groups, so that the caller's environment cannot change the answer.
_NEUTRAL = {"PLATFORMS": "", "PUSH": "false", "CACHE": "none", "SLIMLLM_BUILD_CA": "", "BASE_IMAGES": ""}


class BakeFile:
    """A source tree's docker-bake.hcl, read with `docker buildx bake --print`."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.path = root / BAKE_FILE

    def argv(self, *args: str) -> list[str]:
        return ["docker", "buildx", "bake", "-f", str(self.path), *args]

    def print(self, targets: Sequence[str], variables: Mapping[str, str]) -> dict[str, Any]:
        """The resolved definition of `targets` with `variables` set, as bake prints it."""
        try:
            result = subprocess.run(
                self.argv("--print", "--", *targets),
                cwd=self.root,
                env={**os.environ, **variables},
                capture_output=True,
                text=True,
                timeout=120,
                check=False,
            )
        except FileNotFoundError as exc:
            raise UserError("docker buildx bake needs the docker CLI with the buildx plugin") from exc
        if result.returncode != 0:
            raise UserError(
                f"docker buildx bake --print {' '.join(targets)}: {result.stderr.strip()[-1500:]}"
            )
        printed: dict[str, Any] = json.loads(result.stdout)
        return printed

    @functools.cached_property
    def images(self) -> list[str]:
        """The images: the targets of the `all` group."""
        return list(self.print(["all"], _NEUTRAL)["group"]["all"]["targets"])

    def expand(self, name: str) -> list[str] | None:
        """The images that `name` (an image, `all` or another group) stands for; None if it is neither."""
        if name in self.images:
            return [name]
        if not _TARGET.fullmatch(name):
            return None
        try:
            printed = self.print([name], _NEUTRAL)
        except UserError:
            return None
        groups = printed.get("group", {})

        def walk(item: str) -> list[str]:
            if item in self.images:
                return [item]
            return [image for member in groups.get(item, {}).get("targets", []) for image in walk(member)]

        images = walk(name)
        return images or None


@dataclass
class BuildPlan:
    """What to build and how; made from the user's words by `plan_build`, which checks them."""

    images: list[str]
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
    # SBOM and provenance attestations (a push through a docker-container builder).
    attest: bool = False
    # The version the images carry as their org.opencontainers.image.version label.
    version: str = ""

    def variables(self, base_images: str = "") -> dict[str, str]:
        """The bake file's variables for this plan (docker-bake.hcl says what each does)."""
        return {
            "REGISTRY": self.registry,
            "TAG": ",".join(self.tags),
            "PLATFORMS": ",".join(self.platforms),
            "PUSH": "true" if self.push else "false",
            "CACHE": self.cache,
            "CACHE_DIR": str(self.cache_dir) if self.cache_dir else "",
            "BASE_IMAGES": base_images,
            "ATTEST": "true" if self.attest else "false",
            "VERSION": self.version,
        }


def plan_build(
    *,
    bake: BakeFile,
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
    attest: bool = False,
    version: str = "",
) -> BuildPlan:
    chosen: list[str] = []
    for name in split_items(images) or ["all"]:
        expanded = bake.expand(name)
        if expanded is None:
            raise UserError(
                f"unknown image {name!r}; choose from: all, {', '.join(bake.images)} "
                f"(or another group of {BAKE_FILE})"
            )
        chosen += expanded

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
        if "," in str(file) or '"' in str(file):
            raise UserError(f"secret-files: {secret_id}: a path with ',' or '\"' cannot be handed to bake")
        files[secret_id] = file.resolve()
    values = parse_pairs(secrets, "secrets", _SECRET_ID)
    for value in values.values():
        gha.mask(value)
    clash = set(files) & set(values)
    if clash:
        raise UserError(f"secret {sorted(clash)[0]!r} is given both as a value and as a file")
    if attest and not push:
        raise UserError(
            "attestations (SBOM, provenance) need a push: the local engine's image store keeps none"
        )
    if version and not _TAG.fullmatch(version):
        raise UserError(f"version {version!r} is not a valid image tag (e.g., v1.2.0)")

    return BuildPlan(
        images=list(dict.fromkeys(chosen)),
        platforms=platform_list,
        push=push,
        registry=registry,
        tags=tag_list,
        cache=cache,
        cache_dir=cache_dir.resolve() if cache_dir else None,
        build_args=parse_pairs(build_args, "build-args", _ARG_NAME),
        secret_files=files,
        secrets=values,
        attest=attest,
        version=version,
    )


@dataclass(frozen=True)
class BuildStep:
    """One `docker buildx bake` run of one target: an image for one platform, or for all of them."""

    image: str
    target: str
    platforms: tuple[str, ...]
    refs: tuple[str, ...]
    argv: tuple[str, ...]
    env: Mapping[str, str]  # the bake variables and the secret values
    metadata: Path  # where bake writes the digest (--metadata-file)


def _spec_text(item: str | Mapping[str, Any]) -> str:
    """A secret as `--set` takes it; newer buildx prints secrets as objects, older ones as text."""
    if isinstance(item, str):
        return item
    return ",".join(f"{key}={value}" for key, value in item.items())


def _secret_id(spec: str) -> str:
    for part in spec.split(","):
        key, _, value = part.partition("=")
        if key == "id":
            return value
    return ""


@functools.cache
def _bake_has_allow() -> bool:
    result = subprocess.run(
        ["docker", "buildx", "bake", "--help"], capture_output=True, text=True, timeout=60, check=False
    )
    return "--allow" in result.stdout


def allow_args(reads: Sequence[Path | str] = (), writes: Sequence[Path | str] = ()) -> list[str]:
    """`--allow` arguments for the files a bake reads (`reads`) or writes (`writes`) outside the
    working directory: buildx 0.20 and later refuse them otherwise, older ones know no `--allow`."""
    if not (reads or writes) or not _bake_has_allow():
        return []
    return [f"--allow=fs.read={path}" for path in reads] + [f"--allow=fs={path}" for path in writes]


def build_steps(
    plan: BuildPlan,
    bake: BakeFile,
    printed: Mapping[str, Any],
    variables: Mapping[str, str],
    metadata_dir: Path,
    builder: str | None = None,
    allow: bool = False,
) -> list[BuildStep]:
    """The bake runs for a plan, one per target of the resolved definition (`printed`).

    The bake file decides the targets: pushing builds every platform of an image as one target
    (one multi-platform manifest); loading into the local engine takes one platform at a time,
    so several platforms are one target each (`inference-arm64`), tagged with the architecture
    appended (`local-arm64`).
    """
    targets: Mapping[str, Any] = printed["target"]
    groups: Mapping[str, Any] = printed.get("group", {})
    steps: list[BuildStep] = []
    for image in plan.images:
        names = [image] if image in targets else list(groups[image]["targets"])
        for name in names:
            spec = targets[name]
            env = dict(variables)
            sets = [f"{name}.args.{key}={value}" for key, value in plan.build_args.items()]
            if plan.secret_files or plan.secrets:
                ours = [f"id={secret_id},src={path}" for secret_id, path in plan.secret_files.items()]
                for n, secret_id in enumerate(plan.secrets):
                    variable = f"SLIMLLM_BUILD_SECRET_{n}"
                    env[variable] = plan.secrets[secret_id]
                    ours.append(f"id={secret_id},env={variable}")
                mine = set(plan.secret_files) | set(plan.secrets)
                kept = [
                    text for text in map(_spec_text, spec.get("secret", [])) if _secret_id(text) not in mine
                ]
                sets += [f"{name}.secrets={text}" for text in [*kept, *ours]]
            argv = bake.argv("--progress=plain")
            if builder:
                argv += ["--builder", builder]
            if allow:
                reads = [*plan.secret_files.values()]
                ca = variables.get("SLIMLLM_BUILD_CA", os.environ.get("SLIMLLM_BUILD_CA", ""))
                if ca:
                    reads.append(Path(ca))
                local_cache = [plan.cache_dir] if plan.cache == "local" and plan.cache_dir else []
                argv += allow_args(reads, local_cache)
            metadata = metadata_dir / f"{name}.json"
            argv += ["--metadata-file", str(metadata)]
            for item in sets:
                argv += ["--set", item]
            argv += ["--", name]
            steps.append(
                BuildStep(
                    image=image,
                    target=name,
                    platforms=tuple(spec.get("platforms", [])),
                    refs=tuple(spec.get("tags", [])),
                    argv=tuple(argv),
                    env=env,
                    metadata=metadata,
                )
            )
    return steps


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


def _base_images(plan: BuildPlan, root: Path, builder: str | None) -> str:
    """BASE_IMAGES for loads of foreign platforms into this engine (scripts/base-image-args.sh).

    Only the engine's own builder sees the locally bootstrapped debian:bookworm-slim-<arch>; a
    push, or a build on another builder, starts from the registry's multi-platform Debian.
    """
    if "BASE_IMAGES" in os.environ:
        return os.environ["BASE_IMAGES"]
    script = root / "scripts" / "base-image-args.sh"
    if plan.push or builder or not plan.platforms or not script.is_file():
        return ""
    result = subprocess.run(
        ["bash", str(script), ",".join(plan.platforms)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    return result.stdout.strip() if result.returncode == 0 else ""


def _digest(metadata_file: Path, target: str) -> str:
    try:
        data = json.loads(metadata_file.read_text(encoding="utf-8")).get(target, {})
    except (OSError, ValueError, AttributeError):
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


def run_build(plan: BuildPlan, bake: BakeFile) -> list[Built]:
    builder = _builder_for(plan)
    variables = plan.variables(_base_images(plan, bake.root, builder))
    printed = bake.print(plan.images, variables)
    built = []
    with tempfile.TemporaryDirectory(prefix="slimllm-build-") as tmp:
        for step in build_steps(plan, bake, printed, variables, Path(tmp), builder, allow=True):
            title = f"build {step.target}" + (f" ({', '.join(step.platforms)})" if step.platforms else "")
            with gha.group(title):
                started = time.monotonic()
                # Output streams straight to the log; the secrets are in `env`, never in argv.
                result = subprocess.run(step.argv, cwd=bake.root, env={**os.environ, **step.env}, check=False)
                seconds = time.monotonic() - started
            if result.returncode != 0:
                raise UserError(
                    f"{title} failed (docker buildx bake exit status {result.returncode}); see the log above"
                )
            size = None if plan.push else _local_size(step.refs[0]) if step.refs else None
            built.append(Built(step, seconds, _digest(step.metadata, step.target), size))
    return built


def render_build_markdown(built: Sequence[Built]) -> str:
    from slimllm.reports.render import code, format_bytes, table

    rows = [
        [
            b.step.image,
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


def source_root_option(help_text: str) -> Callable[[F], F]:
    """--root: the slimllm source tree a command reads (SLIMLLM_SOURCE_DIR; default: here)."""
    return click.option(
        "--root",
        type=click.Path(file_okay=False, exists=True, path_type=Path),
        default=".",
        envvar="SLIMLLM_SOURCE_DIR",
        show_envvar=True,
        help=help_text,
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
    "--attest/--no-attest",
    default=False,
    envvar="SLIMLLM_ATTEST",
    show_envvar=True,
    help="Attach SBOM and provenance attestations (with --push, on a docker-container builder).",
)
@click.option(
    "--version",
    "version",
    envvar="SLIMLLM_VERSION",
    show_envvar=True,
    default="",
    help="Version the images carry as their OCI version label (e.g., v1.2.0).",
)
@click.option(
    "--digests-file",
    type=click.Path(dir_okay=False, path_type=Path),
    envvar="SLIMLLM_DIGESTS_FILE",
    show_envvar=True,
    help="Write each image's refs, digest and platforms there as JSON (what `images record` reads).",
)
@source_root_option("The slimllm source tree to build from (its docker-bake.hcl defines the builds).")
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
    attest: bool,
    version: str,
    digests_file: Path | None,
    root: Path,
) -> None:
    """Build IMAGEs (env var: SLIMLLM_IMAGES; default: all) with docker buildx bake.

    The images and groups are those of ROOT/docker-bake.hcl: all, inference, chat-interface,
    cloudflared, health-monitor, model-init; stack (the compose stacks' images). They are named
    REGISTRY/IMAGE:TAG; loading for given platforms into the local engine gives one image per
    platform, tagged TAG-ARCH, and TAG only to the engine's own platform. BuildKit secrets with
    inline values come from SLIMLLM_SECRETS (ID=VALUE lines, environment only, masked). Step
    outputs: images (the first ref of each build, space separated), refs, digests and sizes (JSON
    objects keyed by image name).
    """
    root = root.resolve()
    if not (root / BAKE_FILE).is_file():
        raise UserError(f"{root} is not a slimllm source tree: no {BAKE_FILE}")
    bake = BakeFile(root)
    plan = plan_build(
        bake=bake,
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
        attest=attest,
        version=version,
    )
    built = run_build(plan, bake)
    gha.append_summary(render_build_markdown(built))
    refs: dict[str, list[str]] = {}
    digests: dict[str, str] = {}
    sizes: dict[str, int] = {}
    for b in built:
        refs.setdefault(b.step.image, []).extend(b.step.refs)
        digests.setdefault(b.step.image, b.digest)
        if b.size is not None:
            sizes.setdefault(b.step.image, b.size)
    first_refs = " ".join(b.step.refs[0] for b in built)
    if digests_file is not None:
        recorded = {
            b.step.image: {"refs": list(b.step.refs), "digest": b.digest, "platforms": list(b.step.platforms)}
            for b in built
        }
        digests_file.write_text(json.dumps(recorded, indent=2) + "\n", encoding="utf-8")
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


@images.command("record")
@click.option(
    "--digests-file",
    type=click.Path(dir_okay=False, exists=True, path_type=Path),
    envvar="SLIMLLM_DIGESTS_FILE",
    show_envvar=True,
    required=True,
    help="What `images build --push --digests-file` wrote.",
)
@click.option(
    "--tag",
    envvar="SLIMLLM_TAG",
    show_envvar=True,
    required=True,
    help="The release tag the images were pushed as; serve checks the registry serves it (e.g., v1.2.0).",
)
@click.option(
    "--version",
    "version",
    envvar="SLIMLLM_VERSION",
    show_envvar=True,
    default="",
    help="The release's version (default: the tag).",
)
@click.option(
    "--file",
    "out",
    type=click.Path(dir_okay=False, path_type=Path),
    envvar="SLIMLLM_RELEASED_IMAGES",
    show_envvar=True,
    default=str(released.IMAGES_FILE),
    show_default=True,
    help="The released-images file of the action tree.",
)
@click.option(
    "--verify/--no-verify",
    default=True,
    envvar="SLIMLLM_VERIFY",
    show_envvar=True,
    help="Check with the registry (through the Docker engine) that it serves each tag as its digest.",
)
def images_record(digests_file: Path, tag: str, version: str, out: Path, verify: bool) -> None:
    """Record a release: each pushed image's name, tag and digest, in the file actions/serve reads.

    The serve action runs these images pinned by digest (NAME@sha256:...) whenever no image is
    given to it. Prints one line per image.
    """
    try:
        digests = json.loads(digests_file.read_text(encoding="utf-8"))
    except ValueError as exc:
        raise UserError(f"{digests_file}: not JSON ({exc})") from None
    release = released.record(digests, version or tag, tag)
    if verify:
        from slimllm.runner.stack import docker

        client = docker()
        for pinned in release.images.values():
            served = released.served_digest(client, pinned)
            if served != pinned.digest:
                raise UserError(
                    f"{pinned.image}: the registry serves {pinned.name}:{pinned.tag} as {served}, "
                    f"not the {pinned.digest} the push reported"
                )
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(released.dump(release), encoding="utf-8")
    for pinned in release.images.values():
        click.echo(
            f"recorded {pinned.image}: {pinned.ref} "
            f"({pinned.tag}; {', '.join(pinned.platforms) or 'engine default'})"
        )
