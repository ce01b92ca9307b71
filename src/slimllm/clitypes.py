"""Parameter types shared by the commands the actions run."""

from __future__ import annotations

import click


class _Line(click.types.StringParamType):
    """A repeatable option's values, one per line in its environment variable (values may hold spaces)."""

    name = "line"
    envvar_list_splitter = "\n"


LINE = _Line()
