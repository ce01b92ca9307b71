"""`slimllm report sizes`: waste rules, budgets, the summary, and real images built here with known content.

The summary fixtures are regenerated with SLIMLLM_UPDATE_FIXTURES=1; review the diff before committing it.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import platform
import tarfile
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from slimllm.cli import main
from slimllm.reports import ReportError
from slimllm.reports.sizes import (
    Entry,
    LayerScan,
    MeasuredImage,
    build_report,
    clean_instruction,
    compute_waste,
    load_baseline,
    load_budgets,
    render_sizes_markdown,
    repository,
)
from tests.conftest import require

FIXTURES = Path(__file__).parent / "fixtures" / "reports"
UPDATE = os.environ.get("SLIMLLM_UPDATE_FIXTURES") == "1"
MB = 1_000_000


def matches_fixture(text: str, name: str) -> None:
    path = FIXTURES / name
    if UPDATE:
        path.write_text(text, encoding="utf-8")
    assert text == path.read_text(encoding="utf-8"), f"{name} differs (SLIMLLM_UPDATE_FIXTURES=1 rewrites it)"


# --- waste, as dive defines it -------------------------------------------------------------------------


def f(path: str, size: int) -> Entry:
    return Entry("file", path, size)


@pytest.mark.parametrize(
    ("layers", "wasted", "paths"),
    [
        pytest.param([[f("a", 10)], [f("b", 5)]], 0, [], id="disjoint-files"),
        pytest.param([[f("a", 10)], [f("a", 3)]], 10, ["/a"], id="overwrite-wastes-the-older-version"),
        pytest.param(
            [[f("a", 10)], [f("a", 3)], [f("a", 1)]], 13, ["/a", "/a"], id="every-overwritten-version-counts"
        ),
        pytest.param([[f("d/a", 10)], [Entry("whiteout", "d/a")]], 10, ["/d/a"], id="removed-file"),
        pytest.param(
            [[Entry("dir", "d"), f("d/a", 10), f("d/b", 4)], [Entry("whiteout", "d")]],
            14,
            ["/d/a", "/d/b"],
            id="removed-directory",
        ),
        pytest.param(
            [[f("d/a", 10)], [Entry("dir", "d"), f("d/new", 1), Entry("opaque", "d")]],
            10,
            ["/d/a"],
            id="opaque-dir-hides-lower-layers-only",
        ),
        pytest.param([[f("a", 10), Entry("whiteout", "a")]], 0, [], id="whiteout-never-hides-its-own-layer"),
        pytest.param(
            [[Entry("dir", "d"), f("d/a", 7)], [f("d", 1)]], 7, ["/d/a"], id="file-replacing-a-directory"
        ),
        pytest.param(
            [[f("a", 10)], [Entry("whiteout", "a")], [f("a", 10)]], 10, ["/a"], id="removed-then-re-added"
        ),
    ],
)
def test_waste(layers: list[list[Entry]], wasted: int, paths: list[str]) -> None:
    total, files = compute_waste(layers)
    assert total == wasted
    assert sorted(item["path"] for item in files) == sorted(paths)


@pytest.mark.parametrize(
    ("created_by", "instruction"),
    [
        pytest.param("/bin/sh -c #(nop) COPY file:abc in /data ", "COPY file:abc in /data", id="classic-nop"),
        pytest.param("/bin/sh -c apt-get update", "RUN apt-get update", id="classic-run"),
        pytest.param("|1 V=2 /bin/sh -c make  all", "RUN make all", id="classic-run-with-build-args"),
        pytest.param("RUN /bin/sh -c apt-get update # buildkit", "RUN apt-get update", id="buildkit-run"),
        pytest.param(
            "COPY big.bin /data/big.bin # buildkit", "COPY big.bin /data/big.bin", id="buildkit-copy"
        ),
    ],
)
def test_clean_instruction(created_by: str, instruction: str) -> None:
    assert clean_instruction(created_by) == instruction


@pytest.mark.parametrize(
    ("ref", "repo"),
    [
        pytest.param("slimllm/inference:1.0", "slimllm/inference", id="tag"),
        pytest.param("localhost:5000/x", "localhost:5000/x", id="registry-port-is-not-a-tag"),
        pytest.param("ghcr.io/o/x:1@sha256:abc", "ghcr.io/o/x", id="digest"),
    ],
)
def test_repository(ref: str, repo: str) -> None:
    assert repository(ref) == repo


# --- budgets, baselines and the summary, from fixed data ------------------------------------------------


def layer(diff_id: str, entries: list[Entry], compressed: int) -> LayerScan:
    size = sum(e.size for e in entries if e.kind == "file")
    return LayerScan(f"sha256:{diff_id * 64}"[:71], size, compressed, "gzip", entries)


def synthetic_images() -> list[MeasuredImage]:
    """Three amd64 images: the summary of one architecture has no Arch column."""
    base = layer(
        "a", [Entry("dir", "usr"), f("usr/lib/libc.so", 30_000_000), f("etc/os-release", 300)], 11_000_000
    )
    return [
        MeasuredImage(
            "example/inference:latest",
            "sha256:" + "1" * 64,
            [
                base,
                layer(
                    "b", [f("opt/llama/server", 80_000_000), f("opt/llama/tmp.log", 1_500_000)], 30_000_000
                ),
                layer("c", [Entry("whiteout", "opt/llama/tmp.log"), f("opt/llama/config.json", 2_000)], 900),
            ],
            [
                "Imported from -",
                "COPY dir:0123abcd in /opt/llama",
                "RUN rm /opt/llama/tmp.log && echo '{}' | tee /opt/llama/config.json",
            ],
            "amd64",
        ),
        MeasuredImage(
            "example/gateway:1.2",
            "sha256:" + "2" * 64,
            [
                base,
                layer("d", [f("app/gateway", 5_000_000)], 2_000_000),
                layer("e", [f("app/gateway", 5_200_000)], 2_100_000),
            ],
            ["Imported from -", "COPY gateway /app/gateway", "COPY gateway-v2 /app/gateway"],
            "amd64",
        ),
        MeasuredImage(
            "busybox:latest",
            "sha256:" + "3" * 64,
            [layer("f", [f("bin/busybox", 4_000_000)], 2_200_000)],
            ["ADD file:busybox in /"],
            "amd64",
        ),
    ]


FIXED_NOW = datetime(2025, 1, 2, 3, 4, 5, tzinfo=UTC)


def synthetic_report() -> Any:
    return build_report(
        synthetic_images(),
        budgets=load_budgets(FIXTURES / "budgets.json"),
        baseline=load_baseline(FIXTURES / "baseline.json"),
        run_url="https://github.com/example/slimllm/actions/runs/42",
        now=FIXED_NOW,
    )


def test_report_numbers_from_fixed_layers() -> None:
    report = synthetic_report()
    inference, gateway, busybox = report["images"]
    assert inference["uncompressed_bytes"] == 111_502_300
    assert inference["wasted_bytes"] == 1_500_000  # the removed log
    assert gateway["wasted_bytes"] == 5_000_000  # the overwritten binary
    assert inference["shared_bytes"] == gateway["shared_bytes"] == 30_000_300
    assert busybox["shared_bytes"] == 0
    assert report["unique_bytes"] == 30_000_300 + 81_502_000 + 10_200_000 + 4_000_000
    assert [c["budget"] for c in inference["checks"] if not c["ok"]] == ["max_mb", "max_growth_pct"]
    assert gateway["budget"] is not None and gateway["budget"]["source"] == "example/*"
    assert gateway["ok"] and not inference["ok"] and not report["ok"]
    assert busybox["checks"] == []  # a growth budget without a baseline checks nothing
    assert len(report["breaches"]) == 2


def test_report_json_matches_fixture() -> None:
    matches_fixture(json.dumps(synthetic_report(), indent=2) + "\n", "sizes_report.json")


def test_summary_markdown_matches_fixture() -> None:
    matches_fixture(render_sizes_markdown(synthetic_report(), top_layers=2), "sizes_summary.md")


def test_summary_renders_a_report_loaded_from_json() -> None:
    loaded = json.loads((FIXTURES / "sizes_report.json").read_text())
    assert render_sizes_markdown(loaded, top_layers=2) == (FIXTURES / "sizes_summary.md").read_text()


def test_previous_report_is_a_baseline(tmp_path: Path) -> None:
    path = tmp_path / "yesterday.json"
    path.write_text(json.dumps(synthetic_report()))
    baseline = load_baseline(path)
    assert baseline["busybox:latest"] == {
        "uncompressed_bytes": 4_000_000,
        "compressed_bytes": 2_200_000,
        "arch": "amd64",
    }


def one_layer_image(ref: str, arch: str, size: int) -> MeasuredImage:
    digest = hashlib.sha256(f"{ref} {arch}".encode()).hexdigest()
    return MeasuredImage(
        ref, f"sha256:{digest}", [layer(digest, [f("blob", size)], size)], ["COPY blob /"], arch
    )


def test_budgets_apply_per_architecture(tmp_path: Path) -> None:
    budgets = tmp_path / "budgets.json"
    budgets.write_text(
        json.dumps(
            {
                "default": {"max_growth_pct": 10, "arch": {"arm64": {"max_growth_pct": 20}}},
                "images": {
                    "example/inference": {"max_mb": 100, "arch": {"arm64": {"max_mb": 130}}},
                    "example/*": {"max_mb": 50},
                },
            }
        )
    )
    # Yesterday's report had one image per architecture, under the tags of today's.
    baseline = tmp_path / "baseline.json"
    yesterday = [
        one_layer_image("example/inference:local", "amd64", 95 * MB),
        one_layer_image("example/inference:local-arm64", "arm64", 100 * MB),
    ]
    baseline.write_text(json.dumps(build_report(yesterday, now=FIXED_NOW)))
    report = build_report(
        [
            # 105 MB: over amd64's 100 MB; arm64's 105 MB is within its own 130 MB.
            one_layer_image("example/inference:local", "amd64", 105 * MB),
            one_layer_image("example/inference:local-arm64", "arm64", 118 * MB),
            one_layer_image("example/gateway:local-arm64", "arm64", 60 * MB),
        ],
        budgets=load_budgets(budgets),
        baseline=load_baseline(baseline),
        now=FIXED_NOW,
    )
    amd64, arm64, gateway = report["images"]
    assert (amd64["arch"], arm64["arch"]) == ("amd64", "arm64")
    assert amd64["budget"] == {
        "source": "example/inference",
        "arch": None,
        "max_mb": 100.0,
        "max_compressed_mb": None,
        "max_growth_pct": 10.0,
    }
    assert arm64["budget"] == {
        "source": "example/inference",
        "arch": "arm64",
        "max_mb": 130.0,
        "max_compressed_mb": None,
        "max_growth_pct": 20.0,
    }
    # Growth is measured against the same architecture: +10.5 % and +18 %, not +5 % against arm64.
    assert amd64["baseline"] is not None and amd64["baseline"]["uncompressed_bytes"] == 95 * MB
    assert arm64["baseline"] is not None and arm64["baseline"]["uncompressed_bytes"] == 100 * MB
    assert [c["budget"] for c in amd64["checks"] if not c["ok"]] == ["max_mb", "max_growth_pct"]
    assert arm64["ok"], arm64["checks"]
    # No arm64 override for this entry: its own 50 MB applies on arm64 too.
    assert [c["budget"] for c in gateway["checks"] if not c["ok"]] == ["max_mb"]
    assert gateway["baseline"] is None

    summary = render_sizes_markdown(report, top_layers=0)
    header = next(line for line in summary.splitlines() if "| Image |" in line)
    assert [c.strip() for c in header.split("|")][1:5] == ["", "Image", "Arch", "Size"]
    assert "<code>example/inference:local-arm64</code> | arm64 |" in summary


def test_a_baseline_of_another_architecture_is_not_compared(tmp_path: Path) -> None:
    budgets = tmp_path / "budgets.json"
    budgets.write_text('{"default": {"max_growth_pct": 1}}')
    baseline = tmp_path / "baseline.json"
    baseline.write_text(json.dumps(build_report([one_layer_image("example/x:1", "arm64", MB)])))
    report = build_report(
        [one_layer_image("example/x:1", "amd64", 2 * MB)],
        budgets=load_budgets(budgets),
        baseline=load_baseline(baseline),
    )
    [image] = report["images"]
    assert image["baseline"] is None and image["checks"] == []


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        pytest.param("b.json", "{", "invalid JSON at line 1", id="not-json"),
        pytest.param("b.json", "[]", "expected an object", id="not-an-object"),
        pytest.param("b.json", '{"imgs": {}}', "unknown key 'imgs'", id="unknown-top-key"),
        pytest.param(
            "b.json",
            '{"images": {"x": {"max_gb": 1}}}',
            "unknown budget 'max_gb' for 'x'",
            id="unknown-budget",
        ),
        pytest.param(
            "b.json", '{"images": {"x": {"max_mb": "big"}}}', "must be a number >= 0", id="not-a-number"
        ),
        pytest.param("b.json", '{"images": {"x": {"max_mb": -1}}}', "must be a number >= 0", id="negative"),
        pytest.param(
            "b.json", '{"images": {"x": {"arch": ["arm64"]}}}', "'arch' for 'x' must map", id="arch-not-a-map"
        ),
        pytest.param(
            "b.json",
            '{"images": {"x": {"arch": {"arm64": {"arch": {}}}}}}',
            "unknown budget 'arch' for 'x' on 'arm64'",
            id="arch-nested-twice",
        ),
        pytest.param(
            "b.json",
            '{"default": {"arch": {"arm64": {"max_mb": "big"}}}}',
            "must be a number >= 0",
            id="arch-not-a-number",
        ),
        pytest.param("b.yml", "images: [", "bad budget file", id="bad-yaml"),
        pytest.param(None, "", "budget file not found", id="missing"),
    ],
)
def test_bad_budget_file_is_one_error_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], name: str | None, content: str, message: str
) -> None:
    path = tmp_path / (name or "missing.json")
    if name:
        path.write_text(content)
    assert main(["report", "sizes", "busybox:latest", "--budgets", str(path)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and err.count("\n") == 1, err


def test_yaml_budgets_equal_json_budgets(tmp_path: Path) -> None:
    path = tmp_path / "budgets.yaml"
    path.write_text("default:\n  max_growth_pct: 10\nimages:\n  example/inference:\n    max_mb: 100\n")
    budgets = load_budgets(path)
    assert budgets.for_image("example/inference:2") == {
        "source": "example/inference",
        "arch": None,
        "max_mb": 100.0,
        "max_compressed_mb": None,
        "max_growth_pct": 10.0,
    }


def test_bad_baseline_is_an_error(tmp_path: Path) -> None:
    path = tmp_path / "baseline.json"
    path.write_text('{"x": "big"}')
    with pytest.raises(ReportError, match="bad baseline"):
        load_baseline(path)


# --- real images with known content ---------------------------------------------------------------------

BLOB = 10 * MB


@dataclass
class Built:
    base: str
    derived: str
    waste: str


def build(client: Any, tag: str, dockerfile: str, files: dict[str, bytes]) -> None:
    context = io.BytesIO()
    with tarfile.open(fileobj=context, mode="w") as tar:
        for name, data in {"Dockerfile": dockerfile.encode(), **files}.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    context.seek(0)
    client.images.build(fileobj=context, custom_context=True, tag=tag, rm=True, forcerm=True)


@pytest.fixture(scope="module")
def images(docker_client: Any) -> Iterator[Built]:
    import docker.errors

    try:
        docker_client.images.get("debian:bookworm-slim")
    except docker.errors.ImageNotFound:
        try:
            docker_client.images.pull("debian", tag="bookworm-slim")
        except docker.errors.APIError as exc:
            require(False, f"debian:bookworm-slim is neither here nor pullable ({exc})")
    run = uuid.uuid4().hex[:10]
    built = Built(f"slimllm-test/base:{run}", f"slimllm-test/derived:{run}", f"slimllm-test/waste:{run}")
    random = os.urandom
    try:
        build(
            docker_client,
            built.base,
            "FROM scratch\nCOPY blob /data/blob\nCOPY keep.txt /data/keep.txt\n",
            {"blob": random(BLOB), "keep.txt": b"keep\n"},
        )
        build(
            docker_client,
            built.derived,
            f"FROM {built.base}\nCOPY other /data/other\n",
            {"other": random(2 * MB)},
        )
        build(
            docker_client,
            built.waste,
            "FROM debian:bookworm-slim\n"
            "COPY blob3 /data/blob3\n"
            "COPY over1 /data/over\n"
            "COPY over2 /data/over\n"
            "COPY dirold /data/dir/old\n"
            "RUN rm /data/blob3 && rm -rf /data/dir && mkdir /data/dir && echo x > /data/dir/new\n",
            {
                "blob3": random(3 * MB),
                "over1": random(1 * MB),
                "over2": random(500_000),
                "dirold": random(200_000),
            },
        )
        yield built
    finally:
        for tag in (built.waste, built.derived, built.base):
            with contextlib.suppress(docker.errors.APIError):
                docker_client.images.remove(tag, force=True)


@dataclass
class Run:
    status: int
    stdout: str
    stderr: str
    summary: str
    outputs: str


def run_cli(args: list[str], tmp: Path) -> Run:
    """The CLI in-process as a GitHub step, with the runner's files in `tmp`."""
    summary, outputs = tmp / "summary.md", tmp / "outputs.txt"
    summary.write_text("")
    outputs.write_text("")
    out, err = io.StringIO(), io.StringIO()
    with pytest.MonkeyPatch.context() as env:
        env.setenv("GITHUB_ACTIONS", "true")
        env.setenv("GITHUB_STEP_SUMMARY", str(summary))
        env.setenv("GITHUB_OUTPUT", str(outputs))
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            status = main(args)
    return Run(status, out.getvalue(), err.getvalue(), summary.read_text(), outputs.read_text())


@pytest.fixture(scope="module")
def measured(images: Built, tmp_path_factory: pytest.TempPathFactory) -> tuple[Run, dict[str, Any], Path]:
    """One measurement of all three images against budgets that the base image breaks twice."""
    tmp = tmp_path_factory.mktemp("sizes")
    budgets = tmp / "budgets.json"
    budgets.write_text(
        json.dumps(
            {
                "default": {"max_growth_pct": 5},
                "images": {"slimllm-test/base": {"max_mb": 5}, "slimllm-test/*": {"max_mb": 500}},
            },
            indent=2,
        )
    )
    baseline = tmp / "baseline.json"
    baseline.write_text(json.dumps({images.base: 9 * MB, images.derived: 12 * MB}))
    report = tmp / "report.json"
    args = ["report", "sizes", images.base, images.derived, images.waste]
    args += ["--budgets", str(budgets), "--baseline", str(baseline), "--json-out", str(report)]
    result = run_cli(args, tmp)
    return result, json.loads(report.read_text()), budgets


def by_ref(report: dict[str, Any], ref: str) -> dict[str, Any]:
    return next(image for image in report["images"] if image["ref"] == ref)


@pytest.mark.docker
def test_a_layer_of_n_mb_shows_as_n_mb(images: Built, measured: tuple[Run, dict[str, Any], Path]) -> None:
    _, report, _ = measured
    base = by_ref(report, images.base)
    blob = max(base["layers"], key=lambda item: item["size_bytes"])
    assert abs(blob["size_bytes"] - BLOB) <= BLOB * 0.01
    # Random bytes do not compress: gzip adds only its framing.
    assert abs(blob["compressed_bytes"] - BLOB) <= BLOB * 0.01
    assert "COPY" in blob["created_by"] and "/data/blob" in blob["created_by"]
    assert base["layer_count"] == 2 and base["compressed_source"] in ("gzip", "stored")
    # Built here, so of this machine's architecture, read from the image config.
    assert base["arch"] == {"x86_64": "amd64", "aarch64": "arm64"}.get(platform.machine(), platform.machine())
    assert "10.0 MB" in measured[0].summary


@pytest.mark.docker
def test_removed_and_overwritten_files_are_waste(
    images: Built, measured: tuple[Run, dict[str, Any], Path]
) -> None:
    waste = by_ref(measured[1], images.waste)
    assert waste["wasted_bytes"] == 3 * MB + 1 * MB + 200_000
    assert {item["path"] for item in waste["wasted_files"]} == {"/data/blob3", "/data/over", "/data/dir/old"}
    assert waste["layer_count"] == 6
    assert waste["layers"][-1]["created_by"].startswith("RUN rm /data/blob3")
    assert by_ref(measured[1], images.base)["wasted_bytes"] == 0


@pytest.mark.docker
def test_shared_bytes(images: Built, measured: tuple[Run, dict[str, Any], Path]) -> None:
    report = measured[1]
    base, derived, waste = (by_ref(report, ref) for ref in (images.base, images.derived, images.waste))
    assert base["shared_bytes"] == derived["shared_bytes"] == base["uncompressed_bytes"]
    assert waste["shared_bytes"] == 0
    assert report["unique_bytes"] == report["total_bytes"] - base["uncompressed_bytes"]


@pytest.mark.docker
def test_breaches_fail_the_step(images: Built, measured: tuple[Run, dict[str, Any], Path]) -> None:
    run, report, budgets = measured
    assert run.status == 1
    assert run.stderr.strip().splitlines()[-1].startswith("error: 2 size budget breaches")
    base = by_ref(report, images.base)
    assert sorted(c["budget"] for c in base["checks"] if not c["ok"]) == ["max_growth_pct", "max_mb"]
    assert by_ref(report, images.derived)["ok"]  # 12.0 MB against a 12 MB baseline, under 500 MB
    line = next(
        n for n, text in enumerate(budgets.read_text().splitlines(), 1) if '"slimllm-test/base"' in text
    )
    assert f"::error file={budgets},line={line},title=Image size budget::{images.base}: size" in run.stdout
    assert "| ❌ | <code>" + images.base in run.summary
    assert "**Over budget**" in run.summary and "<details>" in run.summary
    assert "breaches<<" in run.outputs and "\n2\n" in run.outputs and "\nfalse\n" in run.outputs


@pytest.mark.docker
def test_no_fail_and_compose_file(images: Built, tmp_path: Path) -> None:
    compose = tmp_path / "compose.yml"
    compose.write_text(
        f"services:\n  base:\n    image: {images.base}\n  derived:\n    image: {images.derived}\n"
    )
    budgets = tmp_path / "budgets.json"
    budgets.write_text('{"images": {"slimllm-test/*": {"max_mb": 1}}}')
    run = run_cli(
        ["report", "sizes", "--compose", str(compose), "--budgets", str(budgets), "--no-fail"], tmp_path
    )
    assert run.status == 0, run.stderr
    assert images.base in run.summary and images.derived in run.summary
    assert run.stdout.count("::error ") == 2


@pytest.mark.docker
@pytest.mark.parametrize(
    ("args", "message"),
    [
        pytest.param(
            ["slimllm-test/absent:nope"],
            "error: image not found: slimllm-test/absent:nope",
            id="missing-image",
        ),
        pytest.param([], "error: no images to measure", id="no-images"),
    ],
)
def test_bad_image_input_is_one_error_line(tmp_path: Path, args: list[str], message: str) -> None:
    run = run_cli(["report", "sizes", *args], tmp_path)
    assert run.status == 1
    assert run.stderr.strip().splitlines()[-1].startswith(message)
    assert "Traceback" not in run.stderr


def test_bad_compose_file_is_one_error_line(tmp_path: Path) -> None:
    compose = tmp_path / "compose.yml"
    compose.write_text("services: [\n")
    run = run_cli(["report", "sizes", "--compose", str(compose)], tmp_path)
    assert run.status == 1
    assert run.stderr.startswith(f"error: bad compose file {compose}") or "docker CLI is needed" in run.stderr


def test_missing_baseline_is_a_warning(tmp_path: Path) -> None:
    # Yesterday's report may have expired: growth is then unchecked, and the log says so.
    run = run_cli(
        ["report", "sizes", "slimllm-test/absent:nope", "--baseline", str(tmp_path / "none.json")], tmp_path
    )
    assert f"::warning::no baseline at {tmp_path / 'none.json'}" in run.stdout
    assert run.status == 1 and "error: " in run.stderr  # the image (or the engine) is missing, nothing else
