"""`slimllm images ensure`: make the images a compose stack runs present, as `make start-*` does.

For each image, in this order: one given in the environment or .env (the variable services.yml
names it by, e.g. SLIMLLM_INFERENCE_IMAGE), other than its default, is left as it is; with
--build it is built from this checkout; one the release records (actions/serve/images.json) is
pulled by its digest, checked as `actions/serve` checks it, or found already present by that
digest; without a release, the local build slimllm/IMAGE:local is used when the engine has it.
Anything else is built (docker-bake.hcl, after scripts/bootstrap-base-image.sh), a released image
that cannot be had included. Each choice is said in one line, and the references are written to
--env-file as VARIABLE=REF lines for compose. Nothing is rebuilt or pulled again when it is there.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import click

from slimllm.errors import UserError
from slimllm.runner import released
from slimllm.runner.images import BAKE_FILE, BakeFile, plan_build, run_build, source_root_option
from slimllm.runner.released import LOCAL_REGISTRY, Pinned, Release

SERVICES_FILE = Path(__file__).with_name("services.yml")
_IMAGE_LINE = re.compile(
    r"^\s*image:\s*\$\{(SLIMLLM_[A-Z0-9_]+_IMAGE):-("
    + LOCAL_REGISTRY
    + r"/([a-z0-9-]+):[A-Za-z0-9_.-]+)\}\s*$",
    re.MULTILINE,
)
_DOTENV_LINE = re.compile(r"^\s*(?:export\s+)?([A-Za-z_][A-Za-z0-9_]*)\s*=\s*(.*?)\s*$")


def say(text: str) -> None:
    click.echo(f"[slimllm] {text}")


def compose_variables(services: Path = SERVICES_FILE) -> dict[str, tuple[str, str]]:
    """The variable that names each image in services.yml and its default, by image
    (`${SLIMLLM_INFERENCE_IMAGE:-slimllm/inference:local}`)."""
    found = _IMAGE_LINE.findall(services.read_text(encoding="utf-8"))
    return {image: (variable, default) for variable, default, image in found}


def given(variables: Mapping[str, tuple[str, str]], *sources: Mapping[str, str]) -> dict[str, str]:
    """The image each variable names in the first of `sources` that sets it (the environment, then
    .env), unless that is its default: an untouched .env (.env.example) behaves like no .env."""
    chosen: dict[str, str] = {}
    for image, (variable, default) in variables.items():
        value = next((source[variable] for source in sources if source.get(variable)), "")
        if value and value != default:
            chosen[image] = value
    return chosen


def dotenv(path: Path) -> dict[str, str]:
    """KEY=VALUE lines of a .env file, as compose reads the simple ones; no file: nothing."""
    values: dict[str, str] = {}
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return values
    for line in text.splitlines():
        match = _DOTENV_LINE.match(line)
        if match and not line.lstrip().startswith("#"):
            value = match.group(2)
            if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
                value = value[1:-1]
            values[match.group(1)] = value
    return values


@dataclass
class Plan:
    """What `ensure` does: the images given, ready, to pull by digest and to build, and why."""

    given: dict[str, str] = field(default_factory=dict)
    ready: dict[str, str] = field(default_factory=dict)
    pull: dict[str, Pinned] = field(default_factory=dict)
    build: list[str] = field(default_factory=list)
    lines: list[str] = field(default_factory=list)


def decide(
    wanted: Sequence[str],
    release: Release,
    source: str,
    *,
    build: bool,
    explicit: Mapping[str, str],
    has_local: Callable[[str], bool],
    has_pinned: Callable[[Pinned], bool],
    tag: str,
) -> Plan:
    """The choice for each image of `wanted`, from what the engine has (the two callables)."""
    plan = Plan()
    for image in wanted:
        if explicit.get(image):
            plan.given[image] = explicit[image]
        elif build:
            plan.build.append(image)
        elif image in release.images:
            pinned = release.images[image]
            if has_pinned(pinned):
                plan.ready[image] = pinned.ref
            else:
                plan.pull[image] = pinned
        elif has_local(f"{LOCAL_REGISTRY}/{image}:{tag}"):
            plan.ready[image] = f"{LOCAL_REGISTRY}/{image}:{tag}"
        else:
            plan.build.append(image)

    def local(images: Sequence[str] | Mapping[str, str]) -> str:
        return ", ".join(f"{LOCAL_REGISTRY}/{image}:{tag}" for image in images)

    if plan.given:
        plan.lines.append(
            "images: given in the environment or .env, used as they are: "
            + ", ".join(f"{image}={ref}" for image, ref in plan.given.items())
        )
    if build and plan.build:
        plan.lines.append(
            f"images: a build is asked for (--build, make BUILD=1): building {local(plan.build)}"
        )
    elif release.images:
        what = f"release {release.version or '(no version)'} recorded in {source}"
        pinned_ready = [image for image in plan.ready if image in release.images]
        local_ready = [image for image in plan.ready if image not in release.images]
        if plan.pull:
            plan.lines.append(f"images: {what}: pulling {', '.join(plan.pull)} by digest")
        if pinned_ready:
            plan.lines.append(
                f"images: {what}: {', '.join(pinned_ready)} already in the engine by digest, nothing to pull"
            )
        if local_ready:
            plan.lines.append(
                f"images: {what}, which records no {', '.join(local_ready)}: {local(local_ready)} "
                "already in the engine"
            )
        if plan.build:
            plan.lines.append(
                f"images: {what}, which records no {', '.join(plan.build)}: building {local(plan.build)}"
            )
    elif plan.build:
        plan.lines.append(
            f"images: no release recorded in {source}: building {local(plan.build)} (not in the engine)"
        )
    elif plan.ready:
        plan.lines.append(
            f"images: no release recorded in {source}: {local(plan.ready)} already in the engine, "
            "nothing to build"
        )
    return plan


def _has_pinned(client: Any, pinned: Pinned) -> bool:
    """The engine holds the released image by its digest: content-addressed, nothing to check again."""
    image = released.local_image(client, pinned.ref)
    return image is not None and pinned.ref in (image.attrs.get("RepoDigests") or [])


def ensure(
    client: Any,
    bake: BakeFile,
    wanted: Sequence[str],
    release: Release,
    source: str,
    *,
    build: bool,
    explicit: Mapping[str, str],
    tag: str,
) -> dict[str, str]:
    """Carry out the plan; returns the reference of each image not given explicitly."""
    plan = decide(
        wanted,
        release,
        source,
        build=build,
        explicit=explicit,
        has_local=lambda ref: released.local_image(client, ref) is not None,
        has_pinned=lambda pinned: _has_pinned(client, pinned),
        tag=tag,
    )
    for line in plan.lines:
        say(line)
    refs = dict(plan.ready)
    for image, pinned in plan.pull.items():
        try:
            released.pull_pinned(client, pinned)
        except UserError as exc:
            say(
                f"images: the released {image} cannot be had ({exc.format_message()}): "
                f"building {LOCAL_REGISTRY}/{image}:{tag} instead"
            )
            plan.build.append(image)
        else:
            refs[image] = pinned.ref
    if plan.build:
        _base_image(bake.root)
        build_plan = plan_build(
            bake=bake,
            images=plan.build,
            platforms=[],
            push=False,
            registry=LOCAL_REGISTRY,
            tags=[tag],
            cache="none",
            cache_dir=None,
            build_args=(),
            secret_files=(),
            secrets=(),
        )
        run_build(build_plan, bake)
        refs.update({image: f"{LOCAL_REGISTRY}/{image}:{tag}" for image in plan.build})
    return {image: refs[image] for image in wanted if image in refs}


def _base_image(root: Path) -> None:
    """debian:bookworm-slim, which the builds start from: present, pulled, or bootstrapped."""
    script = root / "scripts" / "bootstrap-base-image.sh"
    if not script.is_file():
        return
    result = subprocess.run(["bash", str(script)], cwd=root, check=False, timeout=3600)
    if result.returncode != 0:
        raise UserError(
            f"the base image debian:bookworm-slim is not available ({script.name} failed, see above)"
        )


@click.command("ensure")
@click.argument("names", nargs=-1, metavar="[IMAGE]...")
@click.option(
    "--build/--no-build",
    default=False,
    envvar="SLIMLLM_BUILD",
    show_envvar=True,
    help="Build every image from this checkout, even when it is released or present.",
)
@click.option(
    "--released-images",
    type=click.Path(dir_okay=False, path_type=Path),
    envvar="SLIMLLM_RELEASED_IMAGES",
    show_envvar=True,
    help="The release's images file (default: ROOT/actions/serve/images.json).",
)
@click.option(
    "--env-file",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Write VARIABLE=REF for each image there (the variables of services.yml), for compose.",
)
@click.option(
    "--tag",
    default=released.LOCAL_TAG,
    envvar="SLIMLLM_LOCAL_TAG",
    show_envvar=True,
    help="Tag of the local builds (slimllm/IMAGE:TAG).",
)
@source_root_option("The slimllm source tree (its docker-bake.hcl, .env and actions/serve/images.json).")
def images_ensure(
    names: tuple[str, ...],
    build: bool,
    released_images: Path | None,
    env_file: Path | None,
    tag: str,
    root: Path,
) -> None:
    """Make the IMAGEs a stack runs present (default: the `stack` group of docker-bake.hcl).

    An image named in the environment or ROOT/.env by its services.yml variable, other than its
    default, is used as it is;
    else --build builds it; else the release's image (--released-images) is used, pulled by its
    digest when the engine does not have it; else slimllm/IMAGE:TAG when the engine has it; else
    it is built, after making debian:bookworm-slim available. One line says what and why.
    """
    from slimllm.runner.stack import docker

    root = root.resolve()
    if not (root / BAKE_FILE).is_file():
        raise UserError(f"{root} is not a slimllm source tree: no {BAKE_FILE}")
    bake = BakeFile(root)
    wanted: list[str] = []
    for name in names or ("stack",):
        expanded = bake.expand(name)
        if expanded is None:
            raise UserError(f"unknown image {name!r}; choose from: stack, all, {', '.join(bake.images)}")
        wanted += [image for image in expanded if image not in wanted]
    source = released_images or root / released.IMAGES_FILE
    release = released.load(source)
    shown = source.relative_to(root) if source.is_absolute() and source.is_relative_to(root) else source
    variables = compose_variables()
    explicit = {
        image: ref
        for image, ref in given(variables, os.environ, dotenv(root / ".env")).items()
        if image in wanted
    }
    client = docker()
    refs = ensure(client, bake, wanted, release, str(shown), build=build, explicit=explicit, tag=tag)
    if env_file is not None:
        lines = [
            f"{variables[image][0]}={shlex.quote(ref)}" for image, ref in refs.items() if image in variables
        ]
        env_file.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
