"""Image size report: measure local images layer by layer and check them against budgets.

For every image, through the Docker Engine API (`docker save` of the image):

- uncompressed size: the sum of the file sizes in its layers (what `docker images` shows);
- compressed size: what a registry stores. When the engine keeps the layers compressed (the containerd
  image store keeps the blobs it pulled or pushed), those blobs are counted as they are. Otherwise each
  layer tar is compressed with gzip level 6, as `docker push` does, and the output counted. The Engine
  API cannot give the layer sizes of a pushed manifest (`/distribution/{name}/json` returns only the
  manifest's own descriptor), so images already pushed are measured the same way;
- layer count, and the largest layers with the instruction that made them;
- shared bytes: layers (by diff id) that another image in the same report also has;
- wasted bytes: files that a later layer overwrites or removes. Each such earlier version is waste, as is
  everything under a directory that a later layer removes or makes opaque. (dive's "wasted bytes" also
  counts the version that survives an overwrite; this report counts only bytes no container can see.)

Budgets file (JSON, or YAML with PyYAML installed), sizes in MB = 1,000,000 bytes::

    {
      "default": {"max_growth_pct": 10},
      "images": {
        "slimllm/inference": {"max_mb": 150, "max_compressed_mb": 60, "max_growth_pct": 5},
        "slimllm/*": {"max_mb": 400}
      }
    }

An image takes the first entry that matches it: its exact reference, then its repository without the tag,
then the glob patterns in file order. The entry's keys override those of `default`. `max_growth_pct`
compares the uncompressed size with the baseline: a previous report written by `--json-out`, or a plain
`{"image-ref": bytes}` object.

Budgets apply per architecture: every image is measured with the architecture of its config (`amd64`,
`arm64`, ...), and an entry, or `default`, may hold overrides for one architecture under `arch`, which
take precedence over the entry's own keys. The same base image is bigger on arm64 (Debian's aarch64
binaries are larger), so one limit for both would be either loose on amd64 or tight on arm64::

    "slimllm/inference": {"max_mb": 150, "arch": {"arm64": {"max_mb": 175}}}

Growth is compared only with a baseline image of the same architecture (or one whose architecture the
baseline does not record).
"""

from __future__ import annotations

import fnmatch
import gzip
import json
import re
import subprocess
import tarfile
import tempfile
import zlib
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any, Literal, NotRequired, TypedDict, cast

from slimllm.reports import ReportError
from slimllm.reports.render import (
    MARK_FAIL,
    MARK_NONE,
    MARK_OK,
    UNITS_NOTE,
    cell,
    code,
    details,
    format_bytes,
    format_delta,
    format_number,
    growth_pct,
    read_json,
    table,
)

REPORT_KIND = "slimllm/sizes"
REPORT_VERSION = 1
MB = 1_000_000
GZIP_LEVEL = 6  # the level `docker push` compresses layers with
TOP_WASTED_FILES = 10
_CHUNK = 1 << 20

CompressedSource = Literal["gzip", "stored"]


class LayerJSON(TypedDict):
    index: int  # 1 is the bottom layer
    diff_id: str
    size_bytes: int
    compressed_bytes: int
    created_by: str
    shared: bool


class WastedFileJSON(TypedDict):
    path: str
    bytes: int
    layer: int


class BaselineJSON(TypedDict):
    uncompressed_bytes: int
    compressed_bytes: int | None
    arch: NotRequired[str]  # absent when the baseline does not say (a plain {"ref": bytes} object)


class BudgetJSON(TypedDict):
    source: str  # the budgets-file key that matched, or "default"
    arch: str | None  # the architecture whose overrides applied, if any
    max_mb: float | None
    max_compressed_mb: float | None
    max_growth_pct: float | None


class CheckJSON(TypedDict):
    budget: str
    limit: float
    actual: float
    ok: bool
    message: str


class ImageJSON(TypedDict):
    ref: str
    id: str
    arch: str  # from the image config; "" when it has none. Reports before multi-arch lack the key.
    uncompressed_bytes: int
    compressed_bytes: int
    compressed_source: CompressedSource
    layer_count: int
    shared_bytes: int
    wasted_bytes: int
    layers: list[LayerJSON]
    wasted_files: list[WastedFileJSON]
    baseline: BaselineJSON | None
    budget: BudgetJSON | None
    checks: list[CheckJSON]
    ok: bool


class SizesReportJSON(TypedDict):
    kind: str
    version: int
    generated_at: str
    run_url: str | None
    units: str
    images: list[ImageJSON]
    total_bytes: int
    unique_bytes: int
    total_compressed_bytes: int
    breaches: list[str]
    ok: bool


# --- layer contents and waste ---------------------------------------------------------------------------

EntryKind = Literal["file", "dir", "whiteout", "opaque"]


@dataclass(frozen=True)
class Entry:
    """One tar entry of a layer. Whiteouts carry the path they hide, not the `.wh.` marker's own path."""

    kind: EntryKind
    path: str
    size: int = 0


@dataclass
class LayerScan:
    diff_id: str
    size_bytes: int
    compressed_bytes: int
    compressed_source: CompressedSource
    entries: list[Entry] = field(repr=False)


def entry_for(member: tarfile.TarInfo) -> Entry | None:
    """Classify a layer tar member; None for entries that do not affect what a container sees."""
    path = member.name.strip("/")
    if path.startswith("./"):
        path = path[2:]
    path = path.rstrip("/")
    if not path or path == ".":
        return None
    parent, _, base = path.rpartition("/")
    if base == ".wh..wh..opq":
        return Entry("opaque", parent)
    if base.startswith(".wh..wh."):
        return None  # aufs bookkeeping (e.g. .wh..wh.plnk), not a whiteout
    if base.startswith(".wh."):
        return Entry("whiteout", f"{parent}/{base[4:]}" if parent else base[4:])
    if member.isdir():
        return Entry("dir", path)
    # Hard links add no bytes of their own; symlinks and devices have none.
    return Entry("file", path, member.size if member.isreg() else 0)


def compute_waste(layers: Sequence[Sequence[Entry]]) -> tuple[int, list[WastedFileJSON]]:
    """Bytes in lower layers that upper layers overwrite or remove, and the files they belong to.

    A whiteout or opaque marker only hides lower layers, never entries of its own layer, whatever their
    order in the tar, so every live file remembers the layer that wrote it.
    """
    live: dict[str, tuple[int, int]] = {}  # path -> (size, layer index)
    dirs: dict[str, int] = {}  # path -> layer index
    wasted: list[WastedFileJSON] = []

    def drop(path: str, layer: int) -> None:
        size, origin = live.pop(path)
        if size:
            wasted.append({"path": "/" + path, "bytes": size, "layer": origin + 1})

    def drop_tree(root: str, layer: int, *, include_root: bool) -> None:
        prefix = root + "/"
        for path in [p for p, (_, origin) in live.items() if origin < layer and p.startswith(prefix)]:
            drop(path, layer)
        for path in [d for d, origin in dirs.items() if origin < layer and d.startswith(prefix)]:
            del dirs[path]
        if include_root:
            if root in live and live[root][1] < layer:
                drop(root, layer)
            if dirs.get(root, layer) < layer:
                del dirs[root]

    for index, entries in enumerate(layers):
        for entry in entries:
            if entry.kind == "opaque":
                drop_tree(entry.path, index, include_root=False)
            elif entry.kind == "whiteout":
                drop_tree(entry.path, index, include_root=True)
            elif entry.kind == "dir":
                if entry.path in live and live[entry.path][1] < index:
                    drop(entry.path, index)
                dirs[entry.path] = index
            else:
                if dirs.get(entry.path, index) < index:  # a file replacing a directory hides all of it
                    drop_tree(entry.path, index, include_root=True)
                previous = live.get(entry.path)
                if previous is not None and previous[1] < index:
                    drop(entry.path, index)
                live[entry.path] = (entry.size, index)
    wasted.sort(key=lambda item: (-item["bytes"], item["path"]))
    return sum(item["bytes"] for item in wasted), wasted


class _GzipCounter:
    """A read-through stream that gzips what passes and counts the compressed bytes."""

    def __init__(self, raw: IO[bytes]) -> None:
        self._raw = raw
        self._zip = zlib.compressobj(GZIP_LEVEL, zlib.DEFLATED, 31)  # wbits 31: gzip framing
        self.compressed = 0

    def read(self, size: int = -1) -> bytes:
        data = self._raw.read(size)
        if data:
            self.compressed += len(self._zip.compress(data))
        return data

    def finish(self) -> int:
        while self.read(_CHUNK):
            pass
        self.compressed += len(self._zip.flush())
        return self.compressed


def scan_layer(diff_id: str, blob: IO[bytes], blob_size: int) -> LayerScan:
    """Read one layer blob from `docker save`: its entries, content size and compressed size."""
    head = blob.read(4)
    blob.seek(0)
    if head[:2] == b"\x1f\x8b":
        stored: IO[bytes] = cast(IO[bytes], gzip.GzipFile(fileobj=blob, mode="rb"))
        entries = _read_entries(stored)
        return LayerScan(diff_id, _content_size(entries), blob_size, "stored", entries)
    if head == b"\x28\xb5\x2f\xfd":
        raise ReportError(f"layer {diff_id} is zstd-compressed, which this report cannot read")
    counter = _GzipCounter(blob)
    entries = _read_entries(counter)
    compressed = counter.finish()
    return LayerScan(diff_id, _content_size(entries), compressed, "gzip", entries)


def _read_entries(stream: Any) -> list[Entry]:
    entries: list[Entry] = []
    try:
        # Stream mode reads the tar once, front to back, so the gzip counter sees every byte exactly once.
        with tarfile.open(fileobj=stream, mode="r|") as layer:
            for member in layer:
                entry = entry_for(member)
                if entry is not None:
                    entries.append(entry)
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise ReportError(f"unreadable layer in the saved image: {exc}") from None
    return entries


def _content_size(entries: Iterable[Entry]) -> int:
    return sum(entry.size for entry in entries if entry.kind == "file")


_SHELL_PREFIX = re.compile(r"^(?:\|\d+ .*?)?/bin/sh -c (#\(nop\)\s*)?")


def clean_instruction(created_by: str) -> str:
    """The Dockerfile instruction behind a history entry, without the builders' shell wrapping."""
    text = " ".join(created_by.split())
    text = text.removesuffix(" # buildkit")
    match = _SHELL_PREFIX.match(text)
    if match:
        rest = text[match.end() :]
        text = rest if match.group(1) else f"RUN {rest}"
    elif text.startswith("RUN /bin/sh -c "):
        text = "RUN " + text[len("RUN /bin/sh -c ") :]
    return text


# --- measuring images -----------------------------------------------------------------------------------


@dataclass
class MeasuredImage:
    ref: str
    id: str
    layers: list[LayerScan]
    created_by: list[str]
    arch: str = ""


class ImageMeasurer:
    """Measures images through a docker SDK client; layers shared by several images are read once."""

    def __init__(self, client: Any, progress: Callable[[str], None] | None = None) -> None:
        self._client = client
        self._layers: dict[str, LayerScan] = {}
        self._progress = progress or (lambda _message: None)

    def measure(self, ref: str) -> MeasuredImage:
        import docker.errors

        try:
            image = self._client.images.get(ref)
        except docker.errors.ImageNotFound:
            raise ReportError(f"image not found: {ref} (build or pull it first)") from None
        except docker.errors.APIError as exc:
            raise ReportError(f"cannot inspect image {ref}: {exc.explanation or exc}") from None
        self._progress(f"measuring {ref} ({image.short_id})")
        with tempfile.TemporaryFile(prefix="slimllm-save-") as saved:
            try:
                for chunk in self._client.api.get_image(image.id, chunk_size=_CHUNK):
                    saved.write(chunk)
            except docker.errors.APIError as exc:
                raise ReportError(f"cannot save image {ref}: {exc.explanation or exc}") from None
            saved.seek(0)
            return self._read_saved(ref, image.id, saved)

    def _read_saved(self, ref: str, image_id: str, saved: IO[bytes]) -> MeasuredImage:
        try:
            with tarfile.open(fileobj=saved, mode="r:") as archive:
                manifest = json.load(_member(archive, "manifest.json"))[0]
                config = json.load(_member(archive, manifest["Config"]))
                diff_ids: list[str] = list(config["rootfs"]["diff_ids"])
                paths: list[str] = list(manifest["Layers"])
                if len(paths) != len(diff_ids):
                    raise ReportError(f"image {ref}: the saved manifest and config disagree on the layers")
                layers = []
                for diff_id, path in zip(diff_ids, paths, strict=True):
                    if diff_id not in self._layers:
                        member = archive.getmember(path)
                        self._layers[diff_id] = scan_layer(diff_id, _member(archive, path), member.size)
                    layers.append(self._layers[diff_id])
        except (tarfile.TarError, KeyError, IndexError, TypeError, ValueError) as exc:
            raise ReportError(f"cannot read the saved image {ref}: {type(exc).__name__}: {exc}") from None
        return MeasuredImage(
            ref,
            image_id,
            layers,
            _layer_instructions(config.get("history") or [], len(layers)),
            str(config.get("architecture") or ""),
        )


def _member(archive: tarfile.TarFile, name: str) -> IO[bytes]:
    handle = archive.extractfile(name)
    if handle is None:
        raise KeyError(name)
    return handle


def _layer_instructions(history: Sequence[Mapping[str, Any]], layer_count: int) -> list[str]:
    """One instruction per layer: history entries that made no layer (ENV, CMD...) are skipped."""
    made = [entry for entry in history if not entry.get("empty_layer")]
    texts = [
        clean_instruction(str(entry.get("created_by") or "")) or str(entry.get("comment") or "")
        for entry in made
    ]
    # Images assembled by other tools can have fewer history entries than layers.
    texts += [""] * (layer_count - len(texts))
    return texts[:layer_count]


def images_from_compose(compose_file: Path) -> list[str]:
    """A compose file's images as `docker compose config --images` resolves them (env, defaults, builds)."""
    if not compose_file.is_file():
        raise ReportError(f"compose file not found: {compose_file}")
    try:
        result = subprocess.run(
            ["docker", "compose", "-f", str(compose_file), "config", "--images"],
            capture_output=True,
            text=True,
            timeout=60,
        )
    except FileNotFoundError:
        raise ReportError("the docker CLI is needed to read a compose file, and it is not on PATH") from None
    if result.returncode != 0:
        lines = [line for line in (result.stderr or "").splitlines() if line.strip()]
        why = lines[-1] if lines else f"exit status {result.returncode}"
        raise ReportError(f"bad compose file {compose_file}: {why}")
    images = [line.strip() for line in result.stdout.splitlines() if line.strip()]
    if not images:
        raise ReportError(f"compose file {compose_file} names no images")
    return images


# --- budgets and baselines ------------------------------------------------------------------------------

_BUDGET_KEYS = ("max_mb", "max_compressed_mb", "max_growth_pct")


@dataclass(frozen=True)
class Budget:
    """One budgets-file entry: its limits, and the overrides for each architecture."""

    values: Mapping[str, float]
    arch: Mapping[str, Mapping[str, float]] = field(default_factory=dict)

    def resolve(self, arch: str) -> tuple[dict[str, float], bool]:
        """The limits for `arch`, and whether an override for it applied."""
        override = self.arch.get(arch) if arch else None
        return {**self.values, **(override or {})}, override is not None


@dataclass(frozen=True)
class Budgets:
    default: Budget
    images: Sequence[tuple[str, Budget]]

    def for_image(self, ref: str, arch: str = "") -> BudgetJSON | None:
        repo = repository(ref)
        chosen: tuple[str, Budget] | None = None
        for key, budget in self.images:
            if key in (ref, repo):
                chosen = (key, budget)
                break
        if chosen is None:
            for key, budget in self.images:
                if any(ch in key for ch in "*?[") and (
                    fnmatch.fnmatchcase(ref, key) or fnmatch.fnmatchcase(repo, key)
                ):
                    chosen = (key, budget)
                    break
        if chosen is None and not (self.default.values or self.default.arch):
            return None
        source, entry = chosen if chosen is not None else ("default", Budget({}))
        default, default_arch = self.default.resolve(arch)
        values, entry_arch = entry.resolve(arch)
        merged = {**default, **values}
        return {
            "source": source,
            "arch": arch if default_arch or entry_arch else None,
            "max_mb": merged.get("max_mb"),
            "max_compressed_mb": merged.get("max_compressed_mb"),
            "max_growth_pct": merged.get("max_growth_pct"),
        }


def repository(ref: str) -> str:
    """`ghcr.io/o/x:1.0@sha256:...` -> `ghcr.io/o/x`; a registry port is not a tag."""
    name = ref.split("@", 1)[0]
    slash = name.rfind("/")
    colon = name.rfind(":")
    return name[:colon] if colon > slash else name


def load_budgets(path: Path) -> Budgets:
    data = _load_config(path, "budget file")
    if not isinstance(data, dict):
        raise ReportError(f"bad budget file {path}: expected an object with 'images' and/or 'default'")
    unknown = sorted(set(data) - {"images", "default"})
    if unknown:
        raise ReportError(
            f"bad budget file {path}: unknown key '{unknown[0]}' (expected 'images', 'default')"
        )
    default = _budget_values(path, "default", data.get("default") or {})
    images = data.get("images") or {}
    if not isinstance(images, dict):
        raise ReportError(f"bad budget file {path}: 'images' must map image names to budgets")
    return Budgets(
        default, [(str(key), _budget_values(path, str(key), value)) for key, value in images.items()]
    )


def _load_config(path: Path, what: str) -> object:
    if path.suffix.lower() not in (".yml", ".yaml"):
        return read_json(path, what)
    try:
        import yaml  # type: ignore[import-untyped]
    except ImportError:
        raise ReportError(
            f"{what} {path} is YAML, which needs PyYAML (pip install pyyaml), or use JSON"
        ) from None
    try:
        return yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ReportError(f"{what} not found: {path}") from None
    except OSError as exc:
        raise ReportError(f"cannot read {what} {path}: {exc.strerror or exc}") from None
    except yaml.YAMLError as exc:
        why = " ".join(str(exc).split())
        raise ReportError(f"bad {what} {path}: {why}") from None


def _budget_values(path: Path, key: str, value: object) -> Budget:
    if not isinstance(value, dict):
        raise ReportError(f"bad budget file {path}: the budget for '{key}' must be an object")
    per_arch = value.get("arch", {})
    if not isinstance(per_arch, dict):
        raise ReportError(f"bad budget file {path}: 'arch' for '{key}' must map architectures to budgets")
    return Budget(
        _limits(path, key, {k: v for k, v in value.items() if k != "arch"}),
        {
            str(arch): _limits(path, f"{key}' on '{arch}", limits, nested=False)
            for arch, limits in per_arch.items()
        },
    )


def _limits(path: Path, key: str, value: object, *, nested: bool = True) -> dict[str, float]:
    if not isinstance(value, dict):
        raise ReportError(f"bad budget file {path}: the budget for '{key}' must be an object")
    values: dict[str, float] = {}
    for name, limit in value.items():
        if name not in _BUDGET_KEYS:
            expected = (*_BUDGET_KEYS, "arch") if nested else _BUDGET_KEYS
            raise ReportError(
                f"bad budget file {path}: unknown budget '{name}' for '{key}'"
                f" (expected {', '.join(expected)})"
            )
        if isinstance(limit, bool) or not isinstance(limit, int | float) or limit < 0:
            raise ReportError(
                f"bad budget file {path}: '{name}' for '{key}' must be a number >= 0, got {limit!r}"
            )
        values[name] = float(limit)
    return values


def load_baseline(path: Path) -> dict[str, BaselineJSON]:
    """Sizes by image reference from a previous report, or from a plain `{"ref": bytes}` object."""
    data = read_json(path, "baseline")
    if isinstance(data, dict) and data.get("kind") == REPORT_KIND:
        try:
            baseline: dict[str, BaselineJSON] = {}
            for image in data["images"]:
                entry: BaselineJSON = {
                    "uncompressed_bytes": int(image["uncompressed_bytes"]),
                    "compressed_bytes": int(image["compressed_bytes"]),
                }
                if image.get("arch"):
                    entry["arch"] = str(image["arch"])
                baseline[str(image["ref"])] = entry
            return baseline
        except (KeyError, TypeError, ValueError) as exc:
            raise ReportError(
                f"bad baseline {path}: malformed report ({type(exc).__name__}: {exc})"
            ) from None
    if isinstance(data, dict) and all(
        isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in data.values()
    ):
        return {
            str(ref): {"uncompressed_bytes": size, "compressed_bytes": None} for ref, size in data.items()
        }
    raise ReportError(
        f"bad baseline {path}: expected a report from `slimllm report sizes` or an object of byte sizes"
    )


def baseline_for(ref: str, baseline: Mapping[str, BaselineJSON], arch: str = "") -> BaselineJSON | None:
    def same_arch(entry: BaselineJSON) -> bool:
        return not arch or entry.get("arch", arch) == arch

    if ref in baseline:
        return baseline[ref] if same_arch(baseline[ref]) else None
    repo = repository(ref)
    matches = [entry for key, entry in baseline.items() if repository(key) == repo and same_arch(entry)]
    # Only an unambiguous repository match is a fair comparison.
    return matches[0] if len(matches) == 1 else None


def check_budget(image: ImageJSON) -> list[CheckJSON]:
    budget = image["budget"]
    if budget is None:
        return []
    checks: list[CheckJSON] = []
    size = image["uncompressed_bytes"]
    compressed = image["compressed_bytes"]
    if budget["max_mb"] is not None:
        limit = budget["max_mb"]
        ok = size <= limit * MB
        detail = "over" if not ok else "within"
        checks.append(
            {
                "budget": "max_mb",
                "limit": limit,
                "actual": size / MB,
                "ok": ok,
                "message": f"size {format_bytes(size)} is {detail} the {format_number(limit)} MB budget",
            }
        )
    if budget["max_compressed_mb"] is not None:
        limit = budget["max_compressed_mb"]
        ok = compressed <= limit * MB
        detail = "over" if not ok else "within"
        checks.append(
            {
                "budget": "max_compressed_mb",
                "limit": limit,
                "actual": compressed / MB,
                "ok": ok,
                "message": (
                    f"compressed size {format_bytes(compressed)} is {detail}"
                    f" the {format_number(limit)} MB budget"
                ),
            }
        )
    base = image["baseline"]
    if budget["max_growth_pct"] is not None and base is not None:
        limit = budget["max_growth_pct"]
        growth = growth_pct(size, base["uncompressed_bytes"])
        if growth is not None:
            ok = growth <= limit
            verb = "more than" if not ok else "within"
            checks.append(
                {
                    "budget": "max_growth_pct",
                    "limit": limit,
                    "actual": round(growth, 3),
                    "ok": ok,
                    "message": (
                        f"grew {growth:+.1f} %"
                        f" ({format_bytes(base['uncompressed_bytes'])} -> {format_bytes(size)}),"
                        f" {verb} the {format_number(limit)} % allowed"
                    ),
                }
            )
    return checks


# --- the report -----------------------------------------------------------------------------------------


def build_report(
    measured: Sequence[MeasuredImage],
    *,
    budgets: Budgets | None = None,
    baseline: Mapping[str, BaselineJSON] | None = None,
    run_url: str | None = None,
    now: datetime | None = None,
) -> SizesReportJSON:
    owners: Counter[str] = Counter()
    for image in measured:
        owners.update({layer.diff_id for layer in image.layers})
    unique: dict[str, int] = {}
    images: list[ImageJSON] = []
    for image in measured:
        layers: list[LayerJSON] = []
        for index, (layer, created_by) in enumerate(
            zip(image.layers, image.created_by, strict=True), start=1
        ):
            unique[layer.diff_id] = layer.size_bytes
            layers.append(
                {
                    "index": index,
                    "diff_id": layer.diff_id,
                    "size_bytes": layer.size_bytes,
                    "compressed_bytes": layer.compressed_bytes,
                    "created_by": created_by,
                    "shared": owners[layer.diff_id] > 1,
                }
            )
        wasted_bytes, wasted_files = compute_waste([layer.entries for layer in image.layers])
        sources = {layer.compressed_source for layer in image.layers}
        distinct = {layer.diff_id: layer for layer in image.layers}.values()
        entry: ImageJSON = {
            "ref": image.ref,
            "id": image.id,
            "arch": image.arch,
            "uncompressed_bytes": sum(layer.size_bytes for layer in image.layers),
            "compressed_bytes": sum(layer.compressed_bytes for layer in image.layers),
            "compressed_source": "stored" if sources == {"stored"} else "gzip",
            "layer_count": len(image.layers),
            "shared_bytes": sum(layer.size_bytes for layer in distinct if owners[layer.diff_id] > 1),
            "wasted_bytes": wasted_bytes,
            "wasted_files": wasted_files[:TOP_WASTED_FILES],
            "layers": layers,
            "baseline": baseline_for(image.ref, baseline, image.arch) if baseline is not None else None,
            "budget": budgets.for_image(image.ref, image.arch) if budgets is not None else None,
            "checks": [],
            "ok": True,
        }
        entry["checks"] = check_budget(entry)
        entry["ok"] = all(check["ok"] for check in entry["checks"])
        images.append(entry)
    breaches = [
        f"{image['ref']}: {check['message']}"
        for image in images
        for check in image["checks"]
        if not check["ok"]
    ]
    return {
        "kind": REPORT_KIND,
        "version": REPORT_VERSION,
        "generated_at": (now or datetime.now(UTC)).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "run_url": run_url,
        "units": "bytes; MB = 1,000,000 bytes",
        "images": images,
        "total_bytes": sum(image["uncompressed_bytes"] for image in images),
        "unique_bytes": sum(unique.values()),
        "total_compressed_bytes": sum(image["compressed_bytes"] for image in images),
        "breaches": breaches,
        "ok": not breaches,
    }


def _budget_cell(image: ImageJSON) -> str:
    budget = image["budget"]
    if budget is None:
        return "—"
    parts = []
    if budget["max_mb"] is not None:
        parts.append(f"≤ {format_number(budget['max_mb'])} MB")
    if budget["max_compressed_mb"] is not None:
        parts.append(f"≤ {format_number(budget['max_compressed_mb'])} MB compressed")
    if budget["max_growth_pct"] is not None:
        growth = f"≤ +{format_number(budget['max_growth_pct'])} %"
        parts.append(growth if image["baseline"] is not None else f"{growth} (no baseline)")
    return ", ".join(parts) or "—"


def _mark(image: ImageJSON) -> str:
    if not image["checks"]:
        return MARK_NONE
    return MARK_OK if image["ok"] else MARK_FAIL


def render_sizes_markdown(
    report: SizesReportJSON, *, top_layers: int = 5, heading: str = "### Image sizes"
) -> str:
    """The job-summary section: one table row per image, breaches, then each image's largest layers.

    An Arch column appears when the images are of more than one architecture.
    """
    images = report["images"]
    multi_arch = len({image.get("arch", "") for image in images}) > 1
    rows = []
    for image in images:
        base = image["baseline"]
        rows.append(
            [
                _mark(image),
                code(image["ref"]),
                *([image.get("arch") or "—"] if multi_arch else []),
                format_bytes(image["uncompressed_bytes"]),
                format_delta(image["uncompressed_bytes"], base["uncompressed_bytes"] if base else None),
                format_bytes(image["compressed_bytes"]),
                format_delta(image["compressed_bytes"], base["compressed_bytes"] if base else None),
                str(image["layer_count"]),
                format_bytes(image["shared_bytes"]),
                format_bytes(image["wasted_bytes"]),
                cell(_budget_cell(image)),
            ]
        )
    headers = [
        "",
        "Image",
        *(["Arch"] if multi_arch else []),
        "Size",
        "Δ size",
        "Compressed",
        "Δ compressed",
        "Layers",
        "Shared",
        "Wasted",
        "Budget",
    ]
    align = "clcrrrrrrrl" if multi_arch else "clrrrrrrrl"
    parts = [heading, "", table(headers, align, rows)]
    how = {
        "gzip": "each layer gzipped at level 6, as `docker push` uploads it",
        "stored": "the compressed layer blobs the engine stores",
    }
    sources = "; ".join(how[s] for s in sorted({image["compressed_source"] for image in images}))
    plural = "s" if len(images) != 1 else ""
    parts.append(
        f"{len(images)} image{plural}: {format_bytes(report['total_bytes'])} in all, "
        f"{format_bytes(report['unique_bytes'])} without shared layers; "
        f"{format_bytes(report['total_compressed_bytes'])} compressed ({sources}). "
        "Wasted: bytes of files that later layers overwrite or remove. "
        f"{MARK_OK} within budget, {MARK_FAIL} over budget, {MARK_NONE} nothing to check. "
        + UNITS_NOTE
        + "\n"
    )
    if report["breaches"]:
        parts.append("**Over budget**\n")
        parts.append("".join(f"- {MARK_FAIL} {cell(breach)}\n" for breach in report["breaches"]))
    if top_layers > 0:
        for image in images:
            parts.append(_layers_details(image, top_layers))
    return "\n".join(parts)


def _layers_details(image: ImageJSON, top: int) -> str:
    largest = sorted(image["layers"], key=lambda layer: (-layer["size_bytes"], layer["index"]))[:top]
    rows = [
        [
            str(layer["index"]),
            format_bytes(layer["size_bytes"]),
            format_bytes(layer["compressed_bytes"]),
            "yes" if layer["shared"] else "",
            code(layer["created_by"], limit=160) if layer["created_by"] else "—",
        ]
        for layer in largest
    ]
    body = table(["#", "Size", "Compressed", "Shared", "Created by"], "rrrcl", rows)
    if image["wasted_files"]:
        files = ", ".join(
            f"{code(item['path'])} ({format_bytes(item['bytes'])}, layer {item['layer']})"
            for item in image["wasted_files"]
        )
        body += f"\nWasted {format_bytes(image['wasted_bytes'])}, largest first: {files}\n"
    count = image["layer_count"]
    if len(largest) < count:
        which = f"{len(largest)} largest of {count} layers"
    else:
        which = f"all {count} layers" if count > 1 else "its one layer"
    summary = f"{code(image['ref'])}: {which}"
    return details(summary, body)
