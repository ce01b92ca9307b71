"""The released images: recorded by the release (`slimllm images record`), served by `actions/serve`.

A release pushes every image to its registry and writes `actions/serve/images.json`, which the
serve action reads through `github.action_path`: for each image its repository name, the release
tag and the digest the push produced. Serve then runs `NAME@sha256:...` -- content-addressed, so
what runs is what the release built -- and refuses, in one line, an image whose registry does not
serve that digest under the release tag, or a pull whose repo digest is another one. It never
falls back to a tag. A checkout that was never released has no entries; serve then runs
`slimllm/IMAGE:local`, what actions/build loads.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click

from slimllm.docker_client import engine_refusal
from slimllm.errors import UserError

# The file of an action tree that records a release (next to actions/serve/action.yml).
IMAGES_FILE = Path("actions") / "serve" / "images.json"
# The image of each service a stack runs (services.yml) and the docker-bake.hcl target behind it.
SERVICE_IMAGES = {
    "inference": "inference",
    "chat": "chat-interface",
    "tunnel": "cloudflared",
    "monitor": "health-monitor",
}
LOCAL_REGISTRY = "slimllm"
LOCAL_TAG = "local"
UNRELEASED_NOTE = (
    "no released images are recorded in {file} (an unreleased checkout): "
    "serving slimllm/IMAGE:local, as actions/build loads them"
)

_DIGEST = re.compile(r"sha256:[0-9a-f]{64}")
_NAME = re.compile(
    r"([a-z0-9]([a-z0-9-]*[a-z0-9])?(\.[a-z0-9]([a-z0-9-]*[a-z0-9])?)*(:[0-9]{1,5})?/)?"
    r"[a-z0-9]+([._-][a-z0-9]+)*(/[a-z0-9]+([._-][a-z0-9]+)*)*"
)
_TAG = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}")


@dataclass(frozen=True)
class Pinned:
    """One released image: `name` (registry/namespace/image), the release `tag` and its `digest`."""

    image: str
    name: str
    tag: str
    digest: str
    platforms: tuple[str, ...] = ()

    @property
    def ref(self) -> str:
        return f"{self.name}@{self.digest}"

    def as_json(self) -> dict[str, Any]:
        return {"name": self.name, "tag": self.tag, "digest": self.digest, "platforms": list(self.platforms)}


@dataclass(frozen=True)
class Release:
    version: str
    images: Mapping[str, Pinned]


def load(path: Path) -> Release:
    """The release recorded in `path`; an absent file is an unreleased checkout (no images)."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return Release("", {})
    except (OSError, ValueError) as exc:
        raise UserError(f"{path}: not a released-images file ({exc})") from None
    if not isinstance(data, dict) or not isinstance(data.get("images", {}), dict):
        raise UserError(f"{path}: not a released-images file (no images object)")
    images: dict[str, Pinned] = {}
    for image, entry in data.get("images", {}).items():
        if not isinstance(entry, dict):
            raise UserError(f"{path}: image {image!r} is not an object")
        pinned = Pinned(
            image=str(image),
            name=str(entry.get("name", "")),
            tag=str(entry.get("tag", "")),
            digest=str(entry.get("digest", "")),
            platforms=tuple(str(p) for p in entry.get("platforms", [])),
        )
        check(pinned, str(path))
        images[pinned.image] = pinned
    return Release(str(data.get("version", "")), images)


def check(pinned: Pinned, where: str) -> None:
    if not _NAME.fullmatch(pinned.name):
        raise UserError(f"{where}: image {pinned.image!r}: {pinned.name!r} is not an image name")
    if not _TAG.fullmatch(pinned.tag):
        raise UserError(f"{where}: image {pinned.image!r}: {pinned.tag!r} is not a tag")
    if not _DIGEST.fullmatch(pinned.digest):
        raise UserError(f"{where}: image {pinned.image!r}: {pinned.digest!r} is not a sha256 digest")


def dump(release: Release) -> str:
    body = {
        "version": release.version,
        "images": {image: release.images[image].as_json() for image in sorted(release.images)},
    }
    return json.dumps(body, indent=2) + "\n"


def record(digests: Mapping[str, Any], version: str, tag: str) -> Release:
    """A release from what `slimllm images build --push --digests-file` wrote.

    `digests` maps each image to {"refs": [...], "digest": "sha256:...", "platforms": [...]};
    the image's name is that of its ref tagged `tag`, which must be among its refs.
    """
    images: dict[str, Pinned] = {}
    for image, built in sorted(digests.items()):
        refs = [str(r) for r in built.get("refs", [])]
        names = [r.rpartition(":")[0] for r in refs if r.rpartition(":")[2] == tag]
        if not names:
            raise UserError(f"image {image!r} was not pushed as tag {tag!r} (its refs: {', '.join(refs)})")
        pinned = Pinned(
            image=image,
            name=names[0],
            tag=tag,
            digest=str(built.get("digest", "")),
            platforms=tuple(str(p) for p in built.get("platforms", [])),
        )
        check(pinned, "digests")
        images[image] = pinned
    if not images:
        raise UserError("no images to record: the digests file is empty")
    return Release(version, images)


# -- choosing and pulling what a stack runs ---------------------------------------------------------


def choose(explicit: Mapping[str, str], release: Release, source: str) -> dict[str, str | Pinned]:
    """The image of each service: an explicit reference wins; else the released one; else
    slimllm/IMAGE:local (with a note, once, that the checkout records no release)."""
    chosen: dict[str, str | Pinned] = {}
    noted = False
    for service, ref in explicit.items():
        image = SERVICE_IMAGES[service]
        if ref:
            chosen[service] = ref
        elif image in release.images:
            chosen[service] = release.images[image]
        else:
            if not release.images and not noted:
                click.echo(UNRELEASED_NOTE.format(file=source))
                noted = True
            elif release.images:
                raise UserError(f"{source} records no {image} image; give the {service} image explicitly")
            chosen[service] = f"{LOCAL_REGISTRY}/{image}:{LOCAL_TAG}"
    return chosen


def _retry(what: str, action: Callable[[], Any], attempts: int, delay: float) -> Any:
    for attempt in range(1, attempts + 1):
        try:
            return action()
        except Exception as exc:
            reason = engine_refusal(exc) or str(exc)
            not_found = "not found" in reason.lower() or "manifest unknown" in reason.lower()
            if attempt == attempts or not_found:
                raise UserError(
                    f"{what}: {reason.strip().splitlines()[-1] if reason.strip() else exc}"
                ) from None
            click.echo(f"{what}: attempt {attempt} of {attempts} failed ({reason.strip()[:200]}); retrying")
            time.sleep(delay * attempt)
    raise AssertionError("unreachable")


def served_digest(client: Any, pinned: Pinned, attempts: int = 3, delay: float = 2.0) -> str:
    """The digest the registry serves for the release tag (a manifest HEAD, nothing pulled)."""
    data = _retry(
        f"{pinned.image}: looking up {pinned.name}:{pinned.tag} in its registry",
        lambda: client.images.get_registry_data(f"{pinned.name}:{pinned.tag}"),
        attempts,
        delay,
    )
    return str(data.id)


def pull_pinned(client: Any, pinned: Pinned, *, attempts: int = 3, delay: float = 2.0) -> None:
    """Make `pinned` present by its digest, after checking that its registry serves that digest
    under the release tag; one line per image, an error (one line) on any mismatch."""
    served = served_digest(client, pinned, attempts, delay)
    if served != pinned.digest:
        raise UserError(
            f"{pinned.image}: the registry serves {pinned.name}:{pinned.tag} as {served}, not the "
            f"released {pinned.digest}: refusing it (no fallback to the tag)"
        )
    started = time.monotonic()
    local = local_image(client, pinned.ref)
    if local is None:
        _retry(
            f"{pinned.image}: pulling {pinned.ref}", lambda: client.images.pull(pinned.ref), attempts, delay
        )
        local = local_image(client, pinned.ref)
    repo_digests = list((local.attrs if local is not None else {}).get("RepoDigests") or [])
    if pinned.ref not in repo_digests:
        raise UserError(
            f"{pinned.image}: the pulled image's repo digests are {', '.join(repo_digests) or 'none'}, "
            f"not the released {pinned.ref}: refusing it"
        )
    size = int(local.attrs.get("Size") or 0) if local is not None else 0
    click.echo(
        f"{pinned.image}: {pinned.ref} ({pinned.tag}, {size / 1e6:.1f} MB) "
        f"ready in {time.monotonic() - started:.1f} s"
    )


def local_image(client: Any, ref: str) -> Any:
    """The engine's image `ref`, or None when it has none."""
    try:
        return client.images.get(ref)
    except Exception:  # not in the local engine
        return None


def resolve(
    client: Any, chosen: Mapping[str, str | Pinned], ensure: Callable[[Any, str, str], None]
) -> dict[str, str]:
    """The reference compose runs for each service; pinned images pulled and checked, the others
    through `ensure` (local, or pulled by their reference)."""
    refs: dict[str, str] = {}
    for service, image in chosen.items():
        if isinstance(image, Pinned):
            pull_pinned(client, image)
            refs[service] = image.ref
        else:
            ensure(client, image, service)
            refs[service] = image
    return refs
