"""The tutorial example and the demo run end to end, as a user runs them."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}


def test_tutorial_example_runs_and_leaves_the_tutorials_files(tmp_path):
    result = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "tutorial.py"), str(tmp_path)],
        capture_output=True, text=True, env=ENV, timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    names = set(os.listdir(tmp_path))
    for expected in ("checkpoint", "saved_modelname.index", "saved_modelname.data-00000-of-00001",
                     "saved_modelname.h5", "saved_model", "mysavedmodel", "mysavedmodel.h5"):
        assert expected in names, f"{expected} missing from {sorted(names)}"
    for sub in ("saved_model.pb", "variables", "assets"):
        assert (tmp_path / "saved_model" / sub).exists()
    lines = [line for line in result.stdout.splitlines() if "first predictions" in line]
    assert len(lines) == 3
    # every saved form predicts the same numbers
    assert len({line.split(":", 1)[1] for line in lines}) == 1, lines


def test_demo_command(tmp_path):
    modelkeep = Path(sys.executable).with_name("modelkeep")
    result = subprocess.run(
        [str(modelkeep), "demo", "--dir", str(tmp_path / "demo")],
        capture_output=True, text=True, env={**ENV, "COLUMNS": "160"}, timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "predictions all equal bit for bit" in result.stdout
    for name in ("saved_modelname.index", "saved_modelname.h5", "mysavedmodel", "mysavedmodel.h5", "checkpoint"):
        assert (tmp_path / "demo" / name).exists()
