"""README.md works as written, for a newcomer: every ```python and ```bash block, in order, in a
fresh copy of the repository (its git-tracked and new files only), with nothing added.

Python blocks run in one interpreter session and bash blocks in ``bash -e`` with the venv's
``bin`` first on ``PATH`` (what ``source .venv/bin/activate`` does), all from the copy's root,
by ``tests/readme_blocks.py``. Blocks marked ``<!-- readme: slow -->`` (the quick start's
``make`` commands, a server, the benchmarks) run only under ``-m slow``; there the quick start
builds the copy's own ``.venv`` from PyPI, as on a fresh machine.
In the default run the copy's ``.venv`` is a link to the venv running this test and
``PYTHONPATH`` points at the copy's ``src``, so the copy's code is what runs.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import readme_blocks

ROOT = Path(__file__).resolve().parents[1]
#: what TensorFlow prints on a CPU-only machine unless modelkeep keeps it off stderr
NOISE = ("absl::InitializeLog", "Could not find cuda drivers", "cuInit", "node_def_util")


def _tracked_files(root: Path) -> list[str] | None:
    try:
        done = subprocess.run(["git", "-C", str(root), "ls-files", "-co", "--exclude-standard", "-z"],
                              capture_output=True, check=True)
    except (OSError, subprocess.CalledProcessError):
        return None
    return [name for name in done.stdout.decode().split("\0") if name]


def fresh_copy(root: Path, dest: Path) -> Path:
    """The repository as a fresh clone has it (plus files not yet committed), under ``dest``."""
    names = _tracked_files(root)
    if names is None:  # not a git checkout: everything but what git would ignore
        shutil.copytree(root, dest, ignore=shutil.ignore_patterns(".git", ".venv", "__pycache__", "*.egg-info",
                                                                  "demo-output", ".pytest_cache", ".ruff_cache"))
        return dest
    for name in names:
        source = root / name
        if source.is_file():
            target = dest / name
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target)
    return dest


def _run_readme(tmp_path: Path, *, slow: bool) -> subprocess.CompletedProcess:
    copy = fresh_copy(ROOT, tmp_path / "modelkeep")
    venv = copy / ".venv"
    env = {k: v for k, v in os.environ.items() if k not in ("TF_CPP_MIN_LOG_LEVEL", "PYTHONPATH", "VIRTUAL_ENV")}
    if not slow:  # the state after the quick start: the venv of this test, the copy's code
        venv.symlink_to(Path(sys.prefix), target_is_directory=True)
        env["PYTHONPATH"] = str(copy / "src")
    env["PATH"] = f"{venv / 'bin'}{os.pathsep}{env.get('PATH', '')}"
    env["VIRTUAL_ENV"] = str(venv)
    python = sys.executable if not slow else "python3"
    command = [python, str(copy / "tests" / "readme_blocks.py"), str(copy / "README.md")] + (["--slow"] if slow else [])
    return subprocess.run(command, cwd=copy, env=env, capture_output=True, text=True, timeout=3600 if slow else 900)


def _check(done: subprocess.CompletedProcess, expected: list[readme_blocks.Block]) -> None:
    report = f"--- stdout (end)\n{done.stdout[-3000:]}\n--- stderr (end)\n{done.stderr[-5000:]}"
    assert done.returncode == 0, report
    for block in expected:
        assert f"--- README.md:{block.line} ok" in done.stdout, f"block at line {block.line} did not finish\n{report}"
    noise = [line for line in done.stderr.splitlines() if any(n in line for n in NOISE)]
    assert not noise, "\n".join(noise)


def test_readme_blocks_run_as_written(tmp_path):
    """Every default block of README.md runs, in order, without failure or TensorFlow start-up noise."""
    expected = readme_blocks.runnable((ROOT / "README.md").read_text(), slow=False)
    assert any(b.language == "python" for b in expected) and any(b.language == "bash" for b in expected)
    _check(_run_readme(tmp_path, slow=False), expected)


@pytest.mark.slow
def test_readme_all_blocks_on_a_fresh_venv(tmp_path):
    """All blocks, the slow ones included: the quick start's `make` builds the copy's own venv."""
    expected = readme_blocks.runnable((ROOT / "README.md").read_text(), slow=True)
    _check(_run_readme(tmp_path, slow=True), expected)


def test_block_extraction():
    """Which blocks run: python and bash, in order; text and bare fences never; slow ones when asked."""
    text = (
        "intro\n```python\nx = 1\n```\n\n```text\nnot run\n```\n"
        "<!-- readme: slow -->\n\n```bash\nmake test\n```\n```\n$ output\n```\n```bash\necho $x\n```\n"
    )
    found = readme_blocks.blocks(text)
    assert [(b.language, b.slow) for b in found] == [("python", False), ("text", False), ("bash", True), ("", False), ("bash", False)]
    assert [b.line for b in found] == [2, 6, 11, 14, 17]
    assert [b.code for b in readme_blocks.runnable(text, slow=False)] == ["x = 1\n", "echo $x\n"]
    assert len(readme_blocks.runnable(text, slow=True)) == 3


def test_a_failing_block_is_named(tmp_path):
    """The runner stops at the first failing block and names its line (so the README test can fail)."""
    readme = tmp_path / "README.md"
    readme.write_text("```python\nvalue = 41\n```\n\n```bash\ntest 1 = 1\n```\n\n```python\nassert value == 42\n```\n")
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    done = subprocess.run([sys.executable, str(ROOT / "tests" / "readme_blocks.py"), str(readme)], cwd=tmp_path,
                          env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 1
    assert "--- README.md:1 ok" in done.stdout and "--- README.md:5 ok" in done.stdout
    assert "README block at line 9 (python) failed" in done.stderr and "AssertionError" in done.stderr


def test_blocks_use_the_venv_the_quick_start_made(tmp_path):
    """Once ``./.venv`` exists, blocks run as in a shell after ``source .venv/bin/activate``,
    even when a launcher (a pyenv shim) put another ``python`` in front of the PATH this
    runner got: that is how the first slow README run lost ``modelkeep`` after ``make test``."""
    (tmp_path / ".venv" / "bin").mkdir(parents=True)
    (tmp_path / ".venv" / "bin" / "python").symlink_to(sys.executable)
    shadow = tmp_path / "shadow"
    shadow.mkdir()
    (shadow / "python").write_text("#!/bin/sh\necho 'the shadowing python' >&2\nexit 3\n")
    (shadow / "python").chmod(0o755)
    readme = tmp_path / "README.md"
    readme.write_text("```python\nimport os, sys\nprint('session:', sys.executable)\n```\n\n"
                      "```bash\necho \"bash: $(command -v python)\"\n```\n")
    env = {**os.environ, "PATH": f"{shadow}{os.pathsep}{os.environ.get('PATH', '')}"}
    done = subprocess.run([sys.executable, str(ROOT / "tests" / "readme_blocks.py"), str(readme)], cwd=tmp_path,
                          env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    venv_python = str(tmp_path / ".venv" / "bin" / "python")
    assert f"session: {venv_python}" in done.stdout and f"bash: {venv_python}" in done.stdout, done.stdout
