"""``benchmarks/run.py`` stopped with SIGTERM leaves nothing in its directory, and says up front
what it is about to run and how long that takes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_sigterm_removes_the_benchmark_files(tmp_path):
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
        bench.send_signal(signal.SIGTERM)
        rest = bench.communicate(timeout=120)[0]
    finally:
        if bench.poll() is None:
            bench.kill()
            bench.wait()
    assert bench.returncode == 128 + signal.SIGTERM, "".join(lines) + rest
    assert list(tmp_path.iterdir()) == []
