"""``benchmarks/run.py`` stopped with SIGTERM leaves nothing in its directory, and says up front
what it is about to run and how long that takes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("stop", [signal.SIGTERM, pytest.param(signal.SIGINT, marks=pytest.mark.slow),
                                  pytest.param(signal.SIGHUP, marks=pytest.mark.slow)])
def test_a_stopped_benchmark_leaves_nothing(tmp_path, stop):
    """SIGTERM (and Ctrl-C, SIGHUP) mid-run: the run's directory is removed, exit status 128 + signal."""
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    bench = subprocess.Popen([sys.executable, str(ROOT / "benchmarks" / "run.py"), "--size-gb", "0.005", "--reps", "1",
                              "--dir", str(tmp_path)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    lines = []
    try:
        for line in bench.stdout:  # wait until it writes: its first contender has started
            lines.append(line)
            if "modelkeep backup ckpt" in line:
                break
        assert lines and "took 4.7 minutes" in lines[0] and "SIGTERM stops it" in lines[0], lines
        assert list(tmp_path.iterdir()), "the benchmark wrote nothing yet"
        time.sleep(0.2)
        bench.send_signal(stop)
        rest = bench.communicate(timeout=120)[0]
    finally:
        if bench.poll() is None:
            bench.kill()
            bench.wait()
    expected = -stop if stop == signal.SIGINT else 128 + stop  # Ctrl-C: Python ends by the signal itself
    assert bench.returncode == expected, "".join(lines) + rest
    assert list(tmp_path.iterdir()) == []
