"""One line saying where the tests ran: CPU, SIMD level, kernel and TensorFlow's kernel settings.

Floating-point results depend on all of these, so a failure report must carry them. Printed at
the end of every pytest run (``conftest.py``) and runnable alone: ``python tests/machine.py``.
No TensorFlow import: it reads /proc/cpuinfo and the environment.
"""

from __future__ import annotations

import os
import platform


def _cpuinfo() -> tuple[str, set[str]]:
    model, flags = platform.processor() or platform.machine(), set()
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip() == "model name" and model in ("", platform.machine(), platform.processor()):
                    model = value.strip()
                elif key.strip() in ("flags", "Features") and not flags:
                    flags = set(value.split())
    except OSError:
        pass
    return model, flags


def machine_line() -> str:
    """``machine: AMD EPYC (x86_64, 2 cores, avx512f) | Linux 6.1 | TF_ENABLE_ONEDNN_OPTS=default ...``"""
    model, flags = _cpuinfo()
    simd = next((f for f in ("avx512f", "avx2", "avx", "sse4_2", "asimd", "neon") if f in flags), "no SIMD flag seen")
    settings = " ".join(
        f"{name}={os.environ.get(name, 'default')}"
        for name in ("TF_ENABLE_ONEDNN_OPTS", "TF_NUM_INTRAOP_THREADS", "TF_NUM_INTEROP_THREADS", "OMP_NUM_THREADS")
    )
    return (
        f"machine: {model} ({platform.machine()}, {os.cpu_count()} cores, {simd}) | "
        f"{platform.system()} {platform.release()} | Python {platform.python_version()} | {settings}"
    )


if __name__ == "__main__":
    print(machine_line())
