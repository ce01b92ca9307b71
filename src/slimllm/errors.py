"""Errors shared by the command-line entry points."""

from __future__ import annotations

from typing import IO, Any

import click


class UserError(click.ClickException):
    """A failure the user can fix; shown as one `error:` line, exit status 1."""

    def show(self, file: IO[Any] | None = None) -> None:
        click.echo(f"error: {self.format_message()}", err=True)
