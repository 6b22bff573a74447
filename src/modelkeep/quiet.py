"""Keep TensorFlow's start-up noise off stderr on a CPU-only machine.

Importing TensorFlow prints, from C++ and before any log level applies::

    WARNING: All log messages before absl::InitializeLog() is called are written to STDERR
    I0000 ... port.cc:153] oneDNN custom operations are on. ...
    I0000 ... cudart_stub.cc:31] Could not find cuda drivers on your machine, GPU will not be used.
    E0000 ... cuda_platform.cc:52] failed call to cuInit: ... (303)

``TF_CPP_MIN_LOG_LEVEL`` does not hide the first lines (absl prints them before TensorFlow
reads it). So :func:`install` hooks the first ``import tensorflow`` of the process: while it
runs (and TensorFlow looks for devices, where the cuInit line comes from) file descriptor 2
points to a temporary file; afterwards every captured line that is not one of the known
start-up lines above is written back to stderr, so real errors and warnings still show.
Nothing else changes: no environment variable is set, TensorFlow's log level is untouched,
and a process that imported TensorFlow before modelkeep is left alone.

``import modelkeep`` and the ``modelkeep`` command install the hook; set
``MODELKEEP_TF_LOGS=1`` to see TensorFlow's start-up lines anyway.

Example::

    import modelkeep            # before keras / tensorflow
    import keras                # no absl / CUDA lines on a CPU-only machine
"""

from __future__ import annotations

import importlib.machinery
import os
import re
import sys
import tempfile
from typing import Any

#: start-up lines dropped from stderr (anything else captured is written back)
NOISE = re.compile(
    r"All log messages before absl::InitializeLog\(\) is called"
    r"|oneDNN custom operations are on"
    r"|Could not find cuda drivers on your machine"
    r"|failed call to cuInit"
    r"|cpu_feature_guard\.cc.*This TensorFlow binary is optimized"
    r"|^To enable the following instructions: .*rebuild TensorFlow"
    r"|Unable to register cu(DNN|FFT|BLAS) factory"
    r"|TF-TRT Warning: Could not find TensorRT"
    r"|computation placer already registered"
    r"|node_def_util\.cc.*NodeDef mentions attribute use_unbounded_threadpool"
)
ENV_KEEP = "MODELKEEP_TF_LOGS"


class _QuietLoader:  # an importlib loader (importlib.abc is not imported: it is slow)
    def __init__(self, loader: Any) -> None:
        self._loader = loader

    def __getattr__(self, name: str) -> Any:  # is_package, get_resource_reader, ...: the real loader's
        return getattr(self._loader, name)

    def create_module(self, spec: Any) -> Any:
        return self._loader.create_module(spec)

    def exec_module(self, module: Any) -> None:
        with captured_stderr():
            self._loader.exec_module(module)
            try:  # the device search prints the cuInit line; do it while stderr is captured
                module.config.list_physical_devices()
            except Exception:  # noqa: BLE001 - TensorFlow will report it again when used
                pass


class _QuietFinder:  # a sys.meta_path finder
    def find_spec(self, fullname: str, path: Any = None, target: Any = None) -> Any:
        if fullname != "tensorflow":
            return None
        uninstall()
        spec = importlib.machinery.PathFinder.find_spec(fullname, path)
        if spec is not None and spec.loader is not None:
            spec.loader = _QuietLoader(spec.loader)
        return spec


_FINDER = _QuietFinder()


class captured_stderr:
    """Point file descriptor 2 at a temporary file; on exit write back all but :data:`NOISE`."""

    def __enter__(self) -> captured_stderr:
        sys.stderr.flush()
        self._saved = os.dup(2)
        self._file = tempfile.TemporaryFile()
        os.dup2(self._file.fileno(), 2)
        return self

    def __exit__(self, *exc: Any) -> None:
        try:
            sys.stderr.flush()
        finally:
            os.dup2(self._saved, 2)
            os.close(self._saved)
        self._file.seek(0)
        text = self._file.read().decode("utf-8", "replace")
        self._file.close()
        lines = text.splitlines(keepends=True)
        kept = [line for line in lines if not NOISE.search(line)]
        self.dropped = [line for line in lines if NOISE.search(line)]
        if kept:
            sys.stderr.write("".join(kept))
            sys.stderr.flush()


_DETERMINISM_LINE_SEEN = False


def determinism_rewrite_line() -> Any:
    """A context for the first ``evaluate`` of a process under op determinism.

    There TensorFlow 2.21 rewrites the ParallelMap of Keras's array adapter (partial last
    batch) into a MapDataset and logs, once a process, a C++ ``E0000 node_def_util`` line about
    the ``use_unbounded_threadpool`` attribute it copied along: harmless, but it reads as an
    error. This captures stderr for that one call and writes back everything else (see
    :class:`captured_stderr`); later calls, and runs without op determinism, are untouched.

    Example::

        with quiet.determinism_rewrite_line():
            model.evaluate(x, y)
    """
    import contextlib

    if _DETERMINISM_LINE_SEEN or os.environ.get(ENV_KEEP, "") not in ("", "0") or "tensorflow" not in sys.modules:
        return contextlib.nullcontext()
    from tensorflow.python.framework import config as tf_config

    if not tf_config.is_op_determinism_enabled():
        return contextlib.nullcontext()
    return _until_seen()


class _until_seen(captured_stderr):
    def __exit__(self, *exc: Any) -> None:
        global _DETERMINISM_LINE_SEEN
        super().__exit__(*exc)
        if any("use_unbounded_threadpool" in line for line in self.dropped):
            _DETERMINISM_LINE_SEEN = True  # TensorFlow logs it once a process


def install() -> bool:
    """Hook the first ``import tensorflow``; False when it is too late or turned off."""
    if "tensorflow" in sys.modules or os.environ.get(ENV_KEEP, "") not in ("", "0"):
        return False
    if _FINDER not in sys.meta_path:
        sys.meta_path.insert(0, _FINDER)
    return True


def uninstall() -> None:
    """Remove the hook (it removes itself at the first ``import tensorflow``)."""
    while _FINDER in sys.meta_path:
        sys.meta_path.remove(_FINDER)


__all__ = ["ENV_KEEP", "NOISE", "captured_stderr", "determinism_rewrite_line", "install", "uninstall"]
