"""Load llama-cpp-python's low-level ctypes binding without its high-level layer.

`import llama_cpp` runs the package's `__init__`, which imports the high-level `Llama` class and
with it numpy (about 70 MB installed). The server only drives the C API, so it imports the
binding module from the package directory without running that `__init__`; the image then needs
no numpy at all.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
import types


class BindingError(RuntimeError):
    """llama-cpp-python is missing or its native library cannot be loaded."""


def load() -> types.ModuleType:
    """Return `llama_cpp.llama_cpp`, the ctypes binding of llama.h."""
    if "llama_cpp.llama_cpp" in sys.modules:
        return sys.modules["llama_cpp.llama_cpp"]
    if "llama_cpp" not in sys.modules:
        spec = importlib.util.find_spec("llama_cpp")
        if spec is None or not spec.submodule_search_locations:
            raise BindingError("llama-cpp-python is not installed (pip install 'slimllm[server]')")
        package = types.ModuleType("llama_cpp")
        package.__path__ = list(spec.submodule_search_locations)
        package.__spec__ = spec
        package.__file__ = spec.origin
        sys.modules["llama_cpp"] = package
    try:
        return importlib.import_module("llama_cpp.llama_cpp")
    except (ImportError, OSError) as exc:
        raise BindingError(f"cannot load llama.cpp's native library: {exc}") from None
