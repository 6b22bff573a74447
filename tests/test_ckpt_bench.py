"""``benchmarks/ckpt_bench.py`` stopped with SIGTERM mid-fit leaves nothing in its directory."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_a_stopped_checkpoint_benchmark_leaves_nothing(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "TF_CPP_MIN_LOG_LEVEL": "2"}
    cmd = [sys.executable, str(ROOT / "benchmarks" / "ckpt_bench.py"), "--size-mb", "4", "--epochs", "2",
           "--dir", str(tmp_path), "--no-peers-venv"]  # fmt: skip
    bench = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    lines = []
    try:
        for line in bench.stdout:  # a contender's fit has started: checkpoints are being written
            lines.append(line)
            if "BackupAndRestore" in line:
                break
        assert lines and "SIGTERM stops it" in lines[0], lines
        assert list(tmp_path.iterdir()), "the benchmark wrote nothing yet"
        time.sleep(0.3)
        bench.send_signal(signal.SIGTERM)
        rest = bench.communicate(timeout=120)[0]
    finally:
        if bench.poll() is None:
            bench.kill()
            bench.wait()
    assert bench.returncode == 128 + signal.SIGTERM, "".join(lines) + rest
    assert list(tmp_path.iterdir()) == []
