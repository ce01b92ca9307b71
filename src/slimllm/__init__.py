"""slimllm: serve small open LLMs from slim images, with reports on their size and health."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("slimllm")
except PackageNotFoundError:  # running from a source tree without an install
    __version__ = "0.0.0"
