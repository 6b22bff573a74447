"""How many hostile files modelkeep and Keras 3 alone refuse safely, under a 4 GB address-space
limit and a 150 s timeout per file. Prints one table; nothing else is measured.

    PYTHONPATH=src python tests/security/measure.py            # the whole corpus
    PYTHONPATH=src python tests/security/measure.py --only h5_  # entries whose name starts so

Each tool runs in child processes (``resource.setrlimit(RLIMIT_AS, 4 GB)``), one entry after the
other; a child that crashes or hangs is replaced and the entry counted as a crash or a hang.
modelkeep's verdict for an entry is "safe" only if every library entry point (load_weights,
load_model, describe, verify, list, serve, predict as they apply) and every CLI command refuses
it safely (see ``attack.py``). Keras's verdict uses Keras's own API for that kind of file
(``keras.saving.load_model``, ``Model.load_weights``, ``keras.layers.TFSMLayer`` for a
SavedModel, ``tf.train.Checkpoint`` for a checkpoint directory).
"""

from __future__ import annotations

import argparse
import json
import os
import pickle
import resource
import signal
import subprocess
import sys
import tempfile
from collections import Counter
from pathlib import Path

HERE = Path(__file__).parent
LIMIT_AS = 4 << 30
TIMEOUT_S = 150


def _limit() -> None:
    resource.setrlimit(resource.RLIMIT_AS, (LIMIT_AS, LIMIT_AS))


def child(tool: str, root: Path, start: int, first_only: bool = False) -> None:
    """Judge entries ``start..`` with one tool; one JSON line per entry on stdout."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    sys.path.insert(0, str(HERE))
    from attack import check_cli, check_library, cli_commands, keras_attempt

    entries, ctx = pickle.loads((root / "entries.pkl").read_bytes())

    def on_alarm(signum, frame):
        raise TimeoutError(f"over {TIMEOUT_S} s")

    signal.signal(signal.SIGALRM, on_alarm)
    for i, entry in enumerate(entries[start:], start):
        ctx["sentinel"].unlink(missing_ok=True)
        signal.alarm(TIMEOUT_S)
        verdicts = []
        try:
            if tool == "keras":
                verdicts.append(("keras", *keras_attempt(entry, ctx)))
            elif tool == "cli":
                commands = cli_commands(entry, ctx)[:1] if first_only else cli_commands(entry, ctx)
                verdicts += [(" ".join(a[:1]), *check_cli(entry, a, ctx)) for a in commands]
            else:
                verdicts += [(op, *check_library(entry, op, ctx)) for op in entry.ops]
                verdicts += [(" ".join(a[:1]), *check_cli(entry, a, ctx)) for a in cli_commands(entry, ctx)]
        except TimeoutError as exc:
            verdicts.append(("timeout", False, str(exc)))
        finally:
            signal.alarm(0)
        safe = all(v[1] for v in verdicts)
        bad = [f"{v[0]}: {v[2]}" for v in verdicts if not v[1]]
        print(json.dumps({"i": i, "name": entry.name, "safe": safe, "checks": len(verdicts),
                          "why": bad[0] if bad else verdicts[0][2]}), flush=True)


def run_tool(tool: str, root: Path, count: int) -> dict[int, dict]:
    results: dict[int, dict] = {}
    start = 0
    while start < count:
        cmd = [sys.executable, __file__, "--child", tool, "--root", str(root), "--start", str(start)]
        # glibc reserves 64 MB of address space per thread arena; two arenas keep the 4 GB for data
        env = {**os.environ, "MALLOC_ARENA_MAX": "2"}
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, preexec_fn=_limit, env=env)
        for line in proc.stdout:
            try:
                doc = json.loads(line)
            except ValueError:
                continue
            results[doc["i"]] = doc
        proc.wait()
        done = max([i for i in results if i >= start], default=start - 1) + 1
        if done < count:  # the child died while judging entry `done`
            results[done] = {"i": done, "safe": False, "checks": 0, "why": f"crash (exit {proc.returncode})"}
            done += 1
        start = done
    return results


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--child")
    parser.add_argument("--root")
    parser.add_argument("--start", type=int, default=0)
    parser.add_argument("--only", default="")
    parser.add_argument("--first-command-only", action="store_true", help="(--child cli) one command per entry")
    parser.add_argument("--details", action="store_true", help="print each entry's verdicts")
    args = parser.parse_args()
    if args.child:
        child(args.child, Path(args.root), args.start, args.first_command_only)
        return 0
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    sys.path.insert(0, str(HERE))
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        build = subprocess.run([sys.executable, "-c", _BUILD, str(root), args.only], cwd=HERE, capture_output=True, text=True)
        if build.returncode:
            print(build.stderr[-3000:])
            return 1
        entries, _ = pickle.loads((root / "entries.pkl").read_bytes())
        mk = run_tool("modelkeep", root, len(entries))
        ks = run_tool("keras", root, len(entries))
    groups: dict[str, Counter] = {}
    for i, entry in enumerate(entries):
        group = entry.name.split("_", 1)[0]
        c = groups.setdefault(group, Counter())
        c["files"] += 1
        c["modelkeep"] += bool(mk.get(i, {}).get("safe"))
        c["keras"] += bool(ks.get(i, {}).get("safe"))
        c["checks"] += mk.get(i, {}).get("checks", 0)
        if args.details or not mk.get(i, {}).get("safe"):
            print(f"  {entry.name:34} modelkeep {'safe' if mk.get(i, {}).get('safe') else 'UNSAFE'}: {mk.get(i, {}).get('why', '?')[:110]}")
        if args.details:
            print(f"  {'':34} keras     {'safe' if ks.get(i, {}).get('safe') else 'UNSAFE'}: {ks.get(i, {}).get('why', '?')[:110]}")
    print(f"\nhostile files refused safely (4 GB address space, {TIMEOUT_S} s per file)")
    print(f"{'group':12} {'files':>5} {'modelkeep':>10} {'keras 3 alone':>14} {'modelkeep checks':>17}")
    total = Counter()
    for group, c in groups.items():
        total.update(c)
        print(f"{group:12} {c['files']:5d} {c['modelkeep']:10d} {c['keras']:14d} {c['checks']:17d}")
    print(f"{'all':12} {total['files']:5d} {total['modelkeep']:10d} {total['keras']:14d} {total['checks']:17d}")
    return 0


def prepare(root: Path, only: str = "") -> tuple[list, dict]:
    """Build the corpus under ``root`` and pickle ``(entries, ctx)`` for the children."""
    import numpy as np
    from corpus import build

    entries, ctx = build(root / "corpus")
    entries = [e for e in entries if e.name.startswith(only)]
    ctx["tmp"] = root / "tmp"
    ctx["tmp"].mkdir()
    ctx["input"] = root / "x.npy"
    np.save(ctx["input"], np.ones((3, 4), np.float32))
    (root / "entries.pkl").write_bytes(pickle.dumps((entries, ctx)))
    return entries, ctx


_BUILD = """
import os, sys
from pathlib import Path
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
from measure import prepare
prepare(Path(sys.argv[1]), sys.argv[2])
"""

if __name__ == "__main__":
    sys.exit(main())
