"""The checkpoint benchmark's own environment for the peers (Orbax), never modelkeep's deps.

``python benchmarks/peers_env.py`` makes (once) a venv under
``~/.cache/modelkeep-bench/checkpoint-peers`` and installs ``benchmarks/ckpt-peers-requirements.txt``
into it. TensorFlow, Keras and NumPy come from the venv that runs this script: a ``.pth``
file adds its site-packages *after* the peers' own, and a constraints file made from its
``pip freeze`` pins them, so pip never installs a second copy of anything that venv has.

Example::

    python benchmarks/peers_env.py          # prints the peers' python
"""

from __future__ import annotations

import os
import subprocess
import sys
import sysconfig
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
REQUIREMENTS = HERE / "ckpt-peers-requirements.txt"
VENV = Path(os.environ.get("MODELKEEP_BENCH_PEERS", Path.home() / ".cache" / "modelkeep-bench" / "checkpoint-peers"))


def peers_python() -> Path:
    return VENV / "bin" / "python"


def ready() -> bool:
    """True when the peers' venv exists with its requirements installed."""
    stamp = VENV / ".installed"
    return peers_python().exists() and stamp.exists() and stamp.read_text() == REQUIREMENTS.read_text()


def ensure() -> Path:
    """Make the venv if needed; return its python."""
    if ready():
        return peers_python()
    base = getattr(sys, "_base_executable", sys.executable)
    subprocess.run([base, "-m", "venv", str(VENV)], check=True)
    purelib = subprocess.run([str(peers_python()), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                             check=True, capture_output=True, text=True).stdout.strip()  # fmt: skip
    ours = sysconfig.get_paths()["purelib"]
    # addsitedir also reads that directory's own .pth files (editable installs)
    Path(purelib, "zz-modelkeep-host.pth").write_text(f"import site; site.addsitedir({ours!r})\n")
    freeze = subprocess.run([sys.executable, "-m", "pip", "freeze", "--exclude-editable"], check=True,
                            capture_output=True, text=True).stdout  # fmt: skip
    with tempfile.NamedTemporaryFile("w", suffix=".txt", delete=False) as constraints:
        constraints.write("\n".join(line for line in freeze.splitlines() if "==" in line) + "\n")
    try:
        subprocess.run([str(peers_python()), "-m", "pip", "install", "-q", "-r", str(REQUIREMENTS), "-c", constraints.name],
                       check=True)  # fmt: skip
    finally:
        os.unlink(constraints.name)
    (VENV / ".installed").write_text(REQUIREMENTS.read_text())
    return peers_python()


if __name__ == "__main__":
    print(ensure())
