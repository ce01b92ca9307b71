"""The `slimllm` command line. Every option can also be set through the environment variable
shown in its help, which is how the composite actions pass their inputs."""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from pathlib import Path

import click

from slimllm import __version__, gha
from slimllm.chat.server import chat_interface
from slimllm.errors import UserError
from slimllm.inference.server import serve
from slimllm.model import DEFAULT_MODELS_DIR, ModelError, fetch, parse_source
from slimllm.reports.commands import report
from slimllm.runner.cli import stack
from slimllm.runner.ensure import images_ensure
from slimllm.runner.images import images
from slimllm.runner.tunnel import tunnel_cli

CONTEXT = {"help_option_names": ["-h", "--help"], "show_default": True}


@click.group(context_settings=CONTEXT)
@click.version_option(__version__, "-V", "--version", prog_name="slimllm")
def cli() -> None:
    """Serve small open LLMs from slim images, and report on them."""


@cli.group()
def model() -> None:
    """Get GGUF models onto this machine."""


@model.command("fetch")
@click.argument("source", required=False, envvar="SLIMLLM_MODEL", default="default")
@click.option(
    "--file",
    "filename",
    envvar="SLIMLLM_MODEL_FILE",
    show_envvar=True,
    help="File in the Hugging Face repo; makes SOURCE a repo id (e.g., qwen2.5-0.5b-instruct-q4_k_m.gguf).",
)
@click.option(
    "--revision",
    envvar="SLIMLLM_MODEL_REVISION",
    show_envvar=True,
    help="Branch, tag or commit of the Hugging Face repo (default: main).",
)
@click.option(
    "--sha256",
    envvar="SLIMLLM_MODEL_SHA256",
    show_envvar=True,
    help="Expected sha256 of the file; a mismatch fails and keeps nothing.",
)
@click.option(
    "--models-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=DEFAULT_MODELS_DIR,
    envvar="SLIMLLM_MODELS_DIR",
    show_envvar=True,
    help="Directory the model is placed in.",
)
@click.option(
    "--progress/--no-progress",
    default=None,
    show_default="on a terminal",
    help="Show a download progress bar.",
)
def model_fetch(
    source: str,
    filename: str | None,
    revision: str | None,
    sha256: str | None,
    models_dir: Path,
    progress: bool | None,
) -> None:
    """Place a model in the models directory and print its path.

    SOURCE (env var: SLIMLLM_MODEL) is `default` (the embedded Gemma 3 270M, no network needed),
    a local .gguf path, or a Hugging Face repo id together with --file. The Hugging Face token, if
    the repo needs one, is read from HF_TOKEN; HF_ENDPOINT points at a mirror.
    """
    try:
        path = fetch(
            parse_source(source, filename=filename, revision=revision, sha256=sha256),
            models_dir,
            progress=progress,
        )
    except ModelError as exc:
        raise UserError(str(exc)) from None
    click.echo(str(path))
    if gha.in_github():
        gha.set_output("model-path", path)


# Commands that live in their own modules.
cli.add_command(serve)
cli.add_command(report)
cli.add_command(tunnel_cli)
cli.add_command(chat_interface)
images.add_command(images_ensure)
cli.add_command(images)
cli.add_command(stack)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the exit status instead of raising SystemExit."""
    try:
        cli.main(args=list(argv) if argv is not None else None, prog_name="slimllm", standalone_mode=False)
    except click.exceptions.Exit as exc:
        return exc.exit_code
    except click.ClickException as exc:
        exc.show()
        return exc.exit_code
    except click.Abort:
        click.echo("aborted", err=True)
        return 130
    except Exception as exc:
        # A bug, not a user error: one line by default, the traceback on request.
        if os.environ.get("SLIMLLM_DEBUG"):
            raise
        click.echo(
            f"error: internal error ({type(exc).__name__}: {exc}); rerun with SLIMLLM_DEBUG=1 for details",
            err=True,
        )
        return 70
    return 0


if __name__ == "__main__":
    sys.exit(main())
