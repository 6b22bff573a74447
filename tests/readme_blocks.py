"""Run README.md's ```python and ```bash blocks in order, as a user would, from a shell in the
repository with the venv activated.

Run by ``tests/test_readme.py`` in a fresh copy of the repository::

    python tests/readme_blocks.py README.md [--slow]

Python blocks run in one interpreter session (``python`` from ``PATH``, started at the first
Python block), so names carry from block to block; bash blocks run with ``bash -e`` in the same directory, with the environment this
process got and, once ``./.venv`` exists, its ``bin`` first on ``PATH`` (as
``source .venv/bin/activate`` sets it; ``activated_env``).
A block whose fence is preceded by the line ``<!-- readme: slow -->`` runs only with
``--slow``; ```text blocks (and fences without a language) are output, never run. The first
failing block stops the run with exit status 1, naming its line in README.md.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

SLOW_MARK = "<!-- readme: slow -->"
FENCE = re.compile(r"^```([A-Za-z0-9_+-]*)\s*$")
RUN = ("python", "bash")


@dataclass
class Block:
    language: str
    code: str
    line: int  # of the opening fence, 1-based
    slow: bool


def blocks(text: str) -> list[Block]:
    """Every fenced block of a markdown text, in order."""
    out: list[Block] = []
    lines = text.splitlines()
    i = 0
    previous = ""  # the last non-blank line before the current one
    while i < len(lines):
        match = FENCE.match(lines[i])
        if not match:
            if lines[i].strip():
                previous = lines[i].strip()
            i += 1
            continue
        start, body = i, []
        i += 1
        while i < len(lines) and not lines[i].startswith("```"):
            body.append(lines[i])
            i += 1
        out.append(Block(match.group(1).lower(), "\n".join(body) + "\n", start + 1, previous == SLOW_MARK))
        previous = ""
        i += 1
    return out


def runnable(text: str, *, slow: bool) -> list[Block]:
    return [b for b in blocks(text) if b.language in RUN and (slow or not b.slow)]


# the Python session: `python` from PATH (the venv's, once activated), fed one block at a time
SESSION = r"""
import json, os, sys, traceback, types
status = os.fdopen(int(sys.argv[1]), "w")
session = types.ModuleType("__main__")
sys.modules["__main__"] = session
for line in sys.stdin:
    block = json.loads(line)
    try:
        exec(compile(block["code"], "README.md:%d" % block["line"], "exec"), session.__dict__)
        ok = True
    except BaseException:
        traceback.print_exc()
        ok = False
    sys.stdout.flush()
    sys.stderr.flush()
    status.write("ok\n" if ok else "failed\n")
    status.flush()
"""


def activated_env() -> dict[str, str]:
    """This process's environment as ``source .venv/bin/activate`` leaves a shell, once the quick
    start has made ``.venv``: its ``bin`` first on ``PATH``. The inherited ``PATH`` alone is not
    enough: a launcher such as a pyenv shim puts its own ``bin`` in front of it."""
    env = dict(os.environ)
    venv = Path.cwd() / ".venv"
    if (venv / "bin").is_dir():
        env["PATH"] = os.pathsep.join([str(venv / "bin"), *(p for p in env.get("PATH", "").split(os.pathsep)
                                                            if p and Path(p) != venv / "bin")])
        env["VIRTUAL_ENV"] = str(venv)
        env.pop("PYTHONHOME", None)
    return env


class PythonSession:
    """One interpreter (``python -c``: the current directory first on sys.path) that runs blocks."""

    def __init__(self) -> None:
        read_end, write_end = os.pipe()
        self.process = subprocess.Popen(["python", "-u", "-c", SESSION, str(write_end)], stdin=subprocess.PIPE,
                                        text=True, pass_fds=(write_end,), env=activated_env())
        os.close(write_end)
        self.status = os.fdopen(read_end)

    def run(self, block: Block) -> bool:
        self.process.stdin.write(json.dumps({"code": block.code, "line": block.line}) + "\n")
        self.process.stdin.flush()
        return self.status.readline().strip() == "ok"

    def close(self) -> None:
        self.process.stdin.close()
        self.process.wait()


def main(argv: list[str]) -> int:
    readme = Path(argv[0])
    slow = "--slow" in argv[1:]
    session = None
    try:
        for block in runnable(readme.read_text(), slow=slow):
            started = time.perf_counter()
            print(f"--- README.md:{block.line} ({block.language})", flush=True)
            if block.language == "python":
                session = session or PythonSession()  # started at the first block: after the quick start
                if not session.run(block):
                    print(f"README block at line {block.line} (python) failed", file=sys.stderr, flush=True)
                    return 1
            else:
                done = subprocess.run(["bash", "-e", "-o", "pipefail", "-c", block.code], env=activated_env())
                if done.returncode != 0:
                    print(f"README block at line {block.line} (bash) failed with exit status {done.returncode}",
                          file=sys.stderr, flush=True)
                    return 1
            print(f"--- README.md:{block.line} ok in {time.perf_counter() - started:.1f} s", flush=True)
    finally:
        if session is not None:
            session.close()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
