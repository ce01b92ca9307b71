"""What the slim runtime images carry, checked on the built images (issue #18).

Both Python images are assembled on `scratch` from app/python-runtime (assemble.sh): the
interpreter, the standard library that app/python-runtime/stdlib.txt names, byte-compiled, the
libraries that ldd finds for them, CA certificates and passwd; then each image's venv. Here: every
file of an image is on the allow-list (app/python-runtime/allowed-files.txt), the standard library
carries no sources, no pip/setuptools/wheel, shared objects are stripped and stored once, the two
images share their Python layer (one digest), and every module of slimllm and every line of
stdlib.txt imports in the image, so a standard library module missing from the list fails here.
"""

from __future__ import annotations

import fnmatch
import hashlib
import io
import json
import re
import subprocess
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import REPO_ROOT, TEST_TAG
from tests.dockerutil import build_image

pytestmark = pytest.mark.docker

RUNTIME = REPO_ROOT / "app" / "python-runtime"
STDLIB = "usr/lib/python3.11"
# The images of tests/test_inference.py and tests/test_chat.py: built once per run.
IMAGES = {name: f"slimllm/{name}:{TEST_TAG}" for name in ("inference", "chat-interface")}
DOCKERFILES = {
    "inference": REPO_ROOT / "app" / "inference" / "Dockerfile",
    "chat-interface": REPO_ROOT / "app" / "chat-interface" / "Dockerfile",
}
# What the images import their modules from, per image: the chat image has no llama.cpp, the
# inference image no chat; the runner and the reports run on the host.
PACKAGES = {
    "inference": ["slimllm.inference", "slimllm.presets", "slimllm.model"],
    "chat-interface": ["slimllm.chat"],
}


@dataclass
class Member:
    path: str
    kind: str  # "file", "symlink", "dir"
    data: bytes


def stdlib_names() -> list[str]:
    names = []
    for line in (RUNTIME / "stdlib.txt").read_text().splitlines():
        name = line.split("#", 1)[0].strip()
        if name:
            names.append(name)
    return names


def allowed_patterns(image: str) -> list[str]:
    patterns = []
    for line in (RUNTIME / "allowed-files.txt").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        images, pattern = line.split(None, 1)
        if images in ("*", image):
            patterns.append(pattern.replace("ARCH", "*-linux-gnu"))
    for name in stdlib_names():
        patterns += [f"{STDLIB}/{name}.pyc", f"{STDLIB}/{name}/*.pyc"]
        patterns.append(f"{STDLIB}/lib-dynload/{name}.cpython-311-*.so")
    return patterns


def _layers(tag: str) -> Iterator[tuple[str, list[Member]]]:
    """(diff id, members) of each layer of `tag`, from `docker save`."""
    saved = subprocess.run(["docker", "save", tag], capture_output=True, check=True, timeout=300).stdout
    with tarfile.open(fileobj=io.BytesIO(saved)) as outer:
        manifest = json.load(outer.extractfile("manifest.json"))  # type: ignore[arg-type]
        config = json.load(outer.extractfile(manifest[0]["Config"]))  # type: ignore[arg-type]
        for diff_id, layer in zip(config["rootfs"]["diff_ids"], manifest[0]["Layers"], strict=True):
            members = []
            with tarfile.open(fileobj=outer.extractfile(layer)) as inner:
                for info in inner:
                    kind = "dir" if info.isdir() else "symlink" if info.issym() else "file"
                    data = inner.extractfile(info).read() if info.isfile() else b""  # type: ignore[union-attr]
                    members.append(Member(info.name.lstrip("./").rstrip("/"), kind, data))
            yield diff_id, members


_CACHE: dict[str, list[tuple[str, list[Member]]]] = {}


def layers(image: str) -> list[tuple[str, list[Member]]]:
    tag = IMAGES[image]
    if tag not in _CACHE:
        build_image(image, tag)
        _CACHE[tag] = list(_layers(tag))
    return _CACHE[tag]


def members(image: str) -> list[Member]:
    return [m for _, layer in layers(image) for m in layer]


def is_elf(data: bytes) -> bool:
    return data[:4] == b"\x7fELF"


def section_names(data: bytes) -> set[str]:
    """The section names of a 64-bit little-endian ELF file."""
    shoff = int.from_bytes(data[0x28:0x30], "little")
    shentsize = int.from_bytes(data[0x3A:0x3C], "little")
    shnum = int.from_bytes(data[0x3C:0x3E], "little")
    shstrndx = int.from_bytes(data[0x3E:0x40], "little")
    if not shoff or not shnum:
        return set()
    headers = [data[shoff + i * shentsize : shoff + (i + 1) * shentsize] for i in range(shnum)]
    strtab = headers[shstrndx]
    str_offset = int.from_bytes(strtab[0x18:0x20], "little")
    names = set()
    for header in headers:
        start = str_offset + int.from_bytes(header[0:4], "little")
        names.add(data[start : data.index(b"\0", start)].decode())
    return names


@pytest.mark.parametrize("image", list(IMAGES))
def test_every_file_is_on_the_allow_list(image: str) -> None:
    patterns = allowed_patterns(image)
    unexpected = sorted(
        m.path
        for m in members(image)
        if m.kind != "dir" and not any(fnmatch.fnmatchcase(m.path, p) for p in patterns)
    )
    assert not unexpected, f"{image} carries files outside app/python-runtime/allowed-files.txt: {unexpected}"


@pytest.mark.parametrize("image", list(IMAGES))
def test_no_sources_no_installers_no_compiler(image: str) -> None:
    paths = [m.path for m in members(image) if m.kind != "dir"]
    sources = [p for p in paths if p.endswith(".py") and (p.startswith(STDLIB) or "/site-packages/" in p)]
    assert not sources, f"{image}: Python sources: {sources[:20]}"
    installer = re.compile(r"/site-packages/(pip|setuptools|wheel|pkg_resources)[/-]")
    installers = [p for p in paths if installer.search(p)]
    assert not installers, f"{image}: {installers[:20]}"
    compilers = [p for p in paths if re.search(r"(^|/)(gcc|g\+\+|cc|c\+\+|ld|as|apt|apt-get|dpkg|perl)$", p)]
    assert not compilers, f"{image}: {compilers}"


@pytest.mark.parametrize("image", list(IMAGES))
def test_shared_objects_are_stripped_and_stored_once(image: str) -> None:
    elves = [m for m in members(image) if m.kind == "file" and is_elf(m.data)]
    assert elves
    unstripped = [m.path for m in elves if ".symtab" in section_names(m.data)]
    assert not unstripped, f"{image}: not stripped: {unstripped}"
    seen: dict[str, str] = {}
    duplicates = []
    for m in elves:
        digest = hashlib.sha256(m.data).hexdigest()
        if digest in seen:
            duplicates.append((seen[digest], m.path))
        seen[digest] = m.path
    assert not duplicates, f"{image}: the same shared object twice: {duplicates}"


def test_the_images_share_their_python_layer() -> None:
    inference, chat = layers("inference"), layers("chat-interface")
    assert inference[0][0] == chat[0][0], "the first layer (the Python runtime) differs"
    python = {m.path for m in inference[0][1]}
    assert f"{STDLIB}/os.pyc" in python and "usr/bin/python3.11" in python
    # Same bytes because the stage is written the same in both Dockerfiles.
    stages = {name: python_root_stage(path.read_text()) for name, path in DOCKERFILES.items()}
    assert stages["inference"] == stages["chat-interface"]


def python_root_stage(dockerfile: str) -> str:
    match = re.search(r"(?ms)^FROM \$\{BASE_IMAGE\} AS python-root$.*?(?=\n\n)", dockerfile)
    assert match, "no python-root stage"
    return match.group(0).strip()


IMPORT_CHECK = """
import importlib, json, pkgutil, sys
names, packages = json.loads(sys.argv[1]), json.loads(sys.argv[2])
missing = {}
for name in names:
    try:
        importlib.import_module(name)
    except ImportError as exc:
        missing[name] = repr(exc)
for package in packages:
    module = importlib.import_module(package)
    path = getattr(module, "__path__", [])
    found = [package] + [m.name for m in pkgutil.walk_packages(path, package + ".")]
    for name in found:
        if name.endswith(".__main__"):
            continue  # runs the program
        try:
            importlib.import_module(name)
        except ModuleNotFoundError as exc:
            # Only a missing standard library module is this test's business.
            if exc.name and exc.name.split(".")[0] in sys.stdlib_module_names:
                missing[name] = repr(exc)
print(json.dumps(missing))
"""


@pytest.mark.parametrize("image", list(IMAGES))
def test_every_listed_and_used_module_imports(docker_client: Any, image: str) -> None:
    layers(image)  # built
    names = [n for n in stdlib_names() if not n.startswith("_") or n in ("_strptime", "_markupbase")]
    out = docker_client.containers.run(
        IMAGES[image],
        ["-c", IMPORT_CHECK, json.dumps(names), json.dumps(PACKAGES[image])],
        entrypoint=["python3"],
        read_only=True,
        remove=True,
    )
    missing = json.loads(out.decode().strip().splitlines()[-1])
    assert not missing, f"{image}: modules that do not import: {missing}"


# Standard library modules that some bytecode of the images imports (at the top or inside a
# function) and that the images leave out on purpose. Any other import of a standard library
# module the image lacks fails test_no_bytecode_imports_a_missing_module: a package update or a
# new import in slimllm that needs one more module is caught here, not by a user.
# fmt: off
ABSENT_ON_PURPOSE = {
    # Other systems' modules (Windows, macOS, AIX).
    "_aix_support", "_osx_support", "_overlapped", "_scproxy", "_winapi", "msvcrt", "nt", "nturl2path",
    "winreg",
    # Pure-Python fallbacks of C modules the interpreter has.
    "_py_abc", "_pydecimal", "_threading_local",
    # East Asian codecs (1 MB): codecs.lookup("shift_jis") and the like raise LookupError, as for
    # any unknown encoding; the APIs speak UTF-8.
    "_codecs_cn", "_codecs_hk", "_codecs_iso2022", "_codecs_jp", "_codecs_kr", "_codecs_tw",
    "_multibytecodec",
    # Interactive use, debugging, tests, the standard modules' own command lines.
    "code", "pdb", "readline", "rlcompleter", "pydoc", "doctest", "unittest", "tkinter", "webbrowser",
    "getopt", "statistics",
    # Paths the services never take: ftp:// URLs, logging's SMTPHandler, multiprocessing's XML-RPC
    # serializer and shared memory, platform.mac_ver, zipfile.PyZipFile, filelock's SQLite lock,
    # shutil's tar archives and slimllm.reports (host only), huggingface_hub's CLI, pydantic's mypy
    # plugin.
    "ftplib", "smtplib", "xmlrpc", "_posixshmem", "plistlib", "py_compile", "sqlite3", "tarfile", "venv",
    "tomllib",
}
# fmt: on

BYTECODE_SCAN = """
import dis, importlib.util, json, marshal, os, sys
def imports(code):
    for ins in dis.get_instructions(code):
        if ins.opname == "IMPORT_NAME" and ins.argval:
            yield ins.argval
    for const in code.co_consts:
        if hasattr(const, "co_code"):
            yield from imports(const)
found = {}
for root in sys.path[1:]:
    for directory, _, files in os.walk(root):
        for name in files:
            if not name.endswith(".pyc"):
                continue
            path = os.path.join(directory, name)
            with open(path, "rb") as f:
                code = marshal.loads(f.read()[16:])
            for module in imports(code):
                top = module.split(".")[0]
                if top in sys.stdlib_module_names and top not in sys.builtin_module_names:
                    found.setdefault(top, set()).add(path)
missing = {m: sorted(p)[:3] for m, p in found.items() if importlib.util.find_spec(m) is None}
print(json.dumps(missing))
"""


@pytest.mark.parametrize("image", list(IMAGES))
def test_no_bytecode_imports_a_missing_module(docker_client: Any, image: str) -> None:
    """Every standard library module any bytecode of the image imports is there, or on purpose not."""
    layers(image)  # built
    out = docker_client.containers.run(
        IMAGES[image], ["-c", BYTECODE_SCAN], entrypoint=["python3"], read_only=True, remove=True
    )
    missing = json.loads(out.decode().strip().splitlines()[-1])
    unexpected = {name: paths for name, paths in missing.items() if name not in ABSENT_ON_PURPOSE}
    assert not unexpected, (
        f"{image}: imported by these files but not in the image: {unexpected}; add each to "
        "app/python-runtime/stdlib.txt (or, if no path of the services can reach it, to ABSENT_ON_PURPOSE)"
    )
    listed = set(stdlib_names())
    assert not listed & ABSENT_ON_PURPOSE, "a module both kept and left out"


def test_stdlib_list_names_only_what_exists() -> None:
    names = stdlib_names()
    assert len(names) == len(set(names)), "a line twice in stdlib.txt"
    assert "os" in names and "encodings" in names
    unused = ("test", "unittest", "idlelib", "tkinter", "lib2to3", "ensurepip", "distutils", "venv", "pydoc")
    for banned in unused:
        assert banned not in names, f"{banned} is not used at run time"


def test_runtime_files_are_the_ones_the_dockerfiles_copy() -> None:
    for path in DOCKERFILES.values():
        text = path.read_text()
        assert re.search(r"(?m)^FROM scratch AS runtime$", text), path
        assert "app/python-runtime/stdlib.txt" in text, path
    assert Path(RUNTIME / "assemble.sh").is_file()
