"""Multi-worker training with ``mk.fit`` under ``tf.distribute.MultiWorkerMirroredStrategy``.

One worker per process; ``TF_CONFIG`` names the cluster and this worker, as TensorFlow's
multi-worker tutorial sets it. On a real cluster run the same command on every node, each
with its own ``TF_CONFIG`` and one ``--backup-dir`` every node reaches (a shared folder)::

    TF_CONFIG='{"cluster": {"worker": ["node0:12345", "node1:12345"]}, "task": {"type": "worker", "index": 0}}' \\
        python examples/multiworker.py --backup-dir /shared/run

On one machine, ``--launch N`` starts N workers on loopback (free ports) and waits::

    python examples/multiworker.py --launch 2 --backup-dir run/scaleout

``--kill-worker K --kill-step S`` makes worker K SIGKILL itself after step S: the others stop
with ``WorkerLostError``; the same command without those flags resumes from the newest backup.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def launch(count: int, argv: list[str]) -> int:
    """Start ``count`` workers of this script on loopback, each with its TF_CONFIG; wait for all."""
    socks = [socket.socket() for _ in range(count)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    cluster = {"worker": [f"127.0.0.1:{p}" for p in ports]}
    procs = []
    for index in range(count):
        env = {**os.environ, "TF_CONFIG": json.dumps({"cluster": cluster, "task": {"type": "worker", "index": index}})}
        procs.append(subprocess.Popen([sys.executable, __file__, *argv], env=env, stderr=subprocess.PIPE, text=True))
    codes = []
    for index, proc in enumerate(procs):
        _, err = proc.communicate()
        codes.append(proc.returncode)
        lost = [line for line in err.splitlines() if "WorkerLostError" in line]
        status = "killed (SIGKILL)" if proc.returncode == -signal.SIGKILL else f"exit {proc.returncode}"
        print(f"worker {index}: {status}" + (f"\n  {lost[-1]}" if lost else ""))
        if proc.returncode not in (0, -signal.SIGKILL) and not lost:
            print(err[-3000:])
    return 0 if codes == [0] * count else 1


def train(args: argparse.Namespace) -> None:
    import tensorflow as tf

    strategy = tf.distribute.MultiWorkerMirroredStrategy()  # reads TF_CONFIG; first TF call
    import keras
    import numpy as np

    import modelkeep as mk

    keras.utils.set_random_seed(1)
    tf.config.experimental.enable_op_determinism()
    task = strategy.cluster_resolver.task_id

    class KillMe(keras.callbacks.Callback):
        def get_state(self):  # no state to keep (mk.fit names callbacks without these two)
            return {}

        def set_state(self, state):
            pass

        def on_train_batch_end(self, batch, logs=None):
            if task == args.kill_worker and int(self.model.optimizer.iterations.numpy()) == args.kill_step:
                os.kill(os.getpid(), signal.SIGKILL)

    rng = np.random.default_rng(0)
    x = rng.normal(size=(256, 8)).astype("float32")
    y = (x.sum(axis=1, keepdims=True) > 0).astype("float32")
    with strategy.scope():  # build and compile in the scope, as TensorFlow's guide says
        model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(16, activation="relu"),
                                  keras.layers.Dense(1, activation="sigmoid")])
        model.compile("adam", "binary_crossentropy", metrics=["accuracy"])
    history = mk.fit(model, x, y, batch_size=32, epochs=args.epochs, backup_dir=args.backup_dir,
                     save_freq=4, verbose=2 if strategy.extended.should_checkpoint else 0, callbacks=[KillMe()])
    if strategy.extended.should_checkpoint:  # the chief
        print(f"chief: {int(model.optimizer.iterations.numpy())} steps, "
              f"loss {history.history['loss'][-1]:.4f}, backups in {args.backup_dir}", flush=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backup-dir", required=True)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--launch", type=int, metavar="N", help="start N workers on this machine")
    parser.add_argument("--kill-worker", type=int, default=-1)
    parser.add_argument("--kill-step", type=int, default=-1)
    args, _ = parser.parse_known_args()
    if args.launch:
        rest = [a for i, a in enumerate(sys.argv[1:]) if a != "--launch" and sys.argv[i] != "--launch"]
        return launch(args.launch, rest)
    train(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
