#!/usr/bin/env python3
"""The Python half of benches/compare/loader.sh, and the report that sets all peers side by side.

    loader.py versions
    loader.py mlinfra --probe BIN --dir DIR [--reps 5] [--batch 256] [--workers 2] [--seed 0]
                      [--step-ms 10] [--stop-after 100]
    loader.py hf      --dir DIR [--reps 5] [--batch 256] [--seed 0] [--step-ms 10] [--stop-after 100]
    loader.py torch   --dir DIR --source hf|ipc [--reps 5] [--batch 256] [--workers 2] [--seed 0]
                      [--step-ms 10] [--stop-after 100]
    loader.py report  FILE.jsonl...

The workload: one shuffled epoch of DIR (written by data.py write: emb fixed_size_list<float32,
64> + label int64), batches of --batch rows, each batch held as arrays/tensors by the consumer.
Each subcommand prints one JSON line per rep ("rep": k) and one summary line per measurement
("rep": "median", medians of the reps); `report` reads the summary lines.

What each figure means, on every side:
- samples_per_s: rows delivered / wall time from building the epoch's loader (mlinfra: the
  Loader builder, its shuffle included; HF: the `.shuffle(seed)` call; torch: constructing the
  DataLoader and calling iter() on it, worker start-up included) to the last batch in hand.
  Opening the data is outside it on every side (mlinfra: IpcCache::open / Dataset::open in the
  probe; HF: Dataset.from_parquet, a warm cache hit; torch: constructing the torch Dataset).
- first_batch_ms: from the same start to holding the first batch.
- wait_ms (with --step-ms, the --stop-after first batches of an epoch, the consumer sleeping
  --step-ms after each batch, a simulated train step): time the consumer spent blocked in
  next() after the first batch. The target is 0: a loader that keeps ahead of the step.
- convert_s: the one-time conversion before the first epoch, timed into a fresh temporary
  directory (mlinfra: a probe run that builds the IPC cache from data.parquet and takes one
  batch, process start included; HF: Dataset.from_parquet into an empty cache_dir, i.e.
  Parquet -> HF's Arrow cache). The timed epochs then read the warm, persistent copy.
"""

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np
import pyarrow as pa
import pyarrow.ipc

EMB_DIM = 64


def emit(side, **fields):
    print(json.dumps({"side": side, **fields}), flush=True)


def median(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def summarize(side, bench, runs, keys, **extra):
    """Prints one line per rep, then the medians of `keys`."""
    for k, run in enumerate(runs, 1):
        emit(side, bench=bench, rep=k, **extra, **run)
    emit(
        side,
        bench=bench,
        rep="median",
        reps=len(runs),
        **extra,
        **{key: median([r.get(key) for r in runs]) for key in keys},
    )


def versions(_args):
    out = {
        "python": platform.python_version(),
        "pyarrow": pa.__version__,
        "numpy": np.__version__,
    }
    try:
        import datasets

        out["datasets"] = datasets.__version__
    except Exception as e:  # noqa: BLE001 - reported, not fatal
        out["datasets"] = f"unavailable: {e}"
    try:
        import torch

        out["torch"] = torch.__version__
        out["torch_threads"] = torch.get_num_threads()
    except Exception as e:  # noqa: BLE001 - reported, not fatal
        out["torch"] = f"unavailable: {type(e).__name__}: {e}"
    emit("versions", **out)


# --- mlinfra: the loader_probe example binary ------------------------------------------------


def probe(cmd):
    done = subprocess.run(cmd, check=True, stdout=subprocess.PIPE, text=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def mlinfra(args):
    base = [args.probe, "--batch", str(args.batch), "--shuffle", "exact", "--seed", str(args.seed),
            "--epoch", "0", "--rank", "0", "--world", "1", "--workers", str(args.workers)]
    cache = os.path.join(args.dir, "mlinfra-cache")
    parquet = os.path.join(args.dir, "data.parquet")
    keys = ["samples_per_s", "first_batch_ms", "wait_ms", "samples", "batches"]
    for source, data in (("ipc-cache", cache), ("parquet", parquet)):
        cmd = base[:1] + ["--data", data] + base[1:]
        runs = [probe(cmd) for _ in range(args.reps)]
        assert all(r["samples"] >= r["consumed"] for r in runs), runs
        summarize("mlinfra", "epoch", runs, keys, source=source, cmd=" ".join(cmd))
    if args.step_ms:
        cmd = base[:1] + ["--data", cache] + base[1:] + [
            "--step-ms", str(args.step_ms), "--stop-after", str(args.stop_after)]
        runs = [probe(cmd) for _ in range(args.reps)]
        summarize("mlinfra", "step", runs, keys, source="ipc-cache", step_ms=args.step_ms,
                  cmd=" ".join(cmd))
    # The one-time conversion: Parquet -> a fresh IPC cache, one batch taken.
    with tempfile.TemporaryDirectory(prefix="mlinfra-loader-cache.") as tmp:
        cmd = base[:1] + ["--data", parquet, "--cache", os.path.join(tmp, "cache")] + base[1:] + [
            "--stop-after", "1"]
        start = time.perf_counter()
        probe(cmd)
        emit("mlinfra", bench="convert", rep="median", reps=1,
             convert_s=time.perf_counter() - start, cmd=" ".join(cmd),
             what="probe process building the IPC cache from data.parquet, first batch taken")


def drain(it, start, step_s=0.0, stop_after=None):
    """Takes batches from `it` (dicts with `emb` and `label`) until it ends or `stop_after`,
    sleeping `step_s` after each (a simulated train step). Times from `start`: the first batch,
    the wait for every later batch, the whole run."""
    first = None
    wait = samples = batches = 0
    while stop_after is None or batches < stop_after:
        t = time.perf_counter()
        try:
            batch = next(it)
        except StopIteration:
            break
        now = time.perf_counter()
        if first is None:
            first = now - start
            assert tuple(batch["emb"].shape[1:]) == (EMB_DIM,), batch["emb"].shape
        else:
            wait += now - t
        samples += len(batch["label"])
        batches += 1
        if step_s:
            time.sleep(step_s)
    total = time.perf_counter() - start
    return {
        "samples": samples,
        "batches": batches,
        "samples_per_s": samples / total,
        "first_batch_ms": first * 1e3,
        "wait_ms": wait * 1e3,
    }


# --- Hugging Face datasets -------------------------------------------------------------------


def hf_dataset(parquet, cache_dir):
    import datasets

    datasets.disable_progress_bars()
    return datasets.Dataset.from_parquet(parquet, cache_dir=cache_dir)


def hf(args):
    parquet = os.path.join(args.dir, "data.parquet")
    # The one-time conversion, cold: Parquet -> HF's Arrow cache in an empty directory.
    with tempfile.TemporaryDirectory(prefix="mlinfra-loader-hf.") as tmp:
        start = time.perf_counter()
        ds = hf_dataset(parquet, tmp)
        convert_s = time.perf_counter() - start
        del ds
    emit("hf-datasets", bench="convert", rep="median", reps=1, convert_s=convert_s,
         what="Dataset.from_parquet into an empty cache_dir")
    # The persistent, warm cache the epochs read (built here on first use).
    ds = hf_dataset(parquet, os.path.join(args.dir, "hf-cache"))
    rows = len(ds)

    def epoch(step_s=0.0, stop_after=None):
        # Fresh shuffle each epoch (load_from_cache_file=False, so a rep never just reloads
        # the indices an earlier rep wrote), then the common numpy-batch idiom.
        start = time.perf_counter()
        shuffled = ds.shuffle(seed=args.seed, load_from_cache_file=False)
        shuffle_ms = (time.perf_counter() - start) * 1e3
        it = iter(shuffled.with_format("numpy").iter(batch_size=args.batch))
        return dict(drain(it, start, step_s, stop_after), shuffle_ms=shuffle_ms)

    epoch()  # warm-up, untimed (page cache, imports)
    runs = [epoch() for _ in range(args.reps)]
    assert all(r["samples"] == rows for r in runs), runs
    keys = ["samples_per_s", "first_batch_ms", "shuffle_ms", "wait_ms", "samples", "batches"]
    summarize("hf-datasets", "epoch", runs, keys,
              api=f"Dataset.shuffle(seed={args.seed}).with_format('numpy').iter(batch_size={args.batch})")
    if args.step_ms:
        runs = [epoch(args.step_ms / 1e3, args.stop_after) for _ in range(args.reps)]
        summarize("hf-datasets", "step", runs, keys, step_ms=args.step_ms)


# --- PyTorch DataLoader ----------------------------------------------------------------------


class IpcRows:
    """The baseline people write: a per-row map-style torch Dataset over a memory-mapped Arrow
    IPC file. Each process maps the file itself (on first use after a fork); __getitem__ returns
    one row as tensors, and the DataLoader's default collate stacks 256 of them."""

    def __init__(self, path):
        self.path = path
        self.pid = None
        with pa.memory_map(path) as source:
            self.rows = pa.ipc.open_file(source).read_all().num_rows

    def _open(self):
        reader = pa.ipc.open_file(pa.memory_map(self.path))
        self.emb, self.label, self.starts = [], [], []
        start = 0
        for k in range(reader.num_record_batches):
            batch = reader.get_batch(k)
            # Zero-copy numpy views of the mapped buffers.
            self.emb.append(batch.column("emb").flatten().to_numpy().reshape(-1, EMB_DIM))
            self.label.append(batch.column("label").to_numpy())
            self.starts.append(start)
            start += batch.num_rows
        self.starts = np.array(self.starts)
        self.pid = os.getpid()

    def __len__(self):
        return self.rows

    def __getitem__(self, i):
        import torch

        if self.pid != os.getpid():
            self._open()
        k = int(np.searchsorted(self.starts, i, side="right")) - 1
        j = i - self.starts[k]
        # Copies of one row (the mapped pages are read-only; from_numpy would warn).
        return {
            "emb": torch.from_numpy(self.emb[k][j].copy()),
            "label": torch.tensor(self.label[k][j]),
        }


def torch_peer(args):
    import torch
    from torch.utils.data import DataLoader, default_collate

    if args.source == "hf":
        ds = hf_dataset(os.path.join(args.dir, "data.parquet"),
                        os.path.join(args.dir, "hf-cache")).with_format("torch")
        side, api = "torch-hf", "DataLoader(hf_dataset.with_format('torch'))"
    else:
        ds = IpcRows(os.path.join(args.dir, "data.arrow"))
        side, api = "torch-ipc", "DataLoader(per-row map-style Dataset over a memory-mapped IPC file)"
    rows = len(ds)

    def epoch(step_s=0.0, stop_after=None):
        generator = torch.Generator()
        generator.manual_seed(args.seed)
        start = time.perf_counter()
        loader = DataLoader(ds, batch_size=args.batch, shuffle=True, num_workers=args.workers,
                            generator=generator)
        it = iter(loader)  # forks the workers
        timings = drain(it, start, step_s, stop_after)
        del it  # shuts the workers down (outside the timing)
        return timings

    # Warm-up, untimed: torch's lazy one-time set-up in this process first (the first row and
    # collate take ~1 s here), as in a training script that has used torch before its first
    # epoch; the forked workers inherit it. Then a short epoch (page cache).
    default_collate([ds[0], ds[1]])
    epoch(stop_after=4)
    runs = [epoch() for _ in range(args.reps)]
    assert all(r["samples"] == rows for r in runs), runs
    keys = ["samples_per_s", "first_batch_ms", "wait_ms", "samples", "batches"]
    summarize(side, "epoch", runs, keys, api=api, workers=args.workers)
    if args.step_ms:
        runs = [epoch(args.step_ms / 1e3, args.stop_after) for _ in range(args.reps)]
        summarize(side, "step", runs, keys, step_ms=args.step_ms, workers=args.workers)


# --- report ----------------------------------------------------------------------------------

PEERS = [
    ("hf-datasets", "HF datasets"),
    ("torch-hf", "torch DataLoader (HF)"),
    ("torch-ipc", "torch DataLoader (IPC mmap)"),
]


def load(paths):
    rows = []
    for path in paths:
        with open(path) as f:
            rows += [json.loads(line) for line in f if line.strip().startswith("{")]
    return rows


def report(args):
    rows = load(args.files)

    def get(side, bench, key, **match):
        for r in rows:
            if (r.get("side") == side and r.get("bench") == bench and r.get("rep") == "median"
                    and all(r.get(k) == v for k, v in match.items())):
                return r.get(key)
        return None

    def fmt(value, digits):
        if value is None:
            return "n/a"
        return f"{value:,.{digits}f}"

    def ratio(mine, peers, higher_is_better):
        peers = [p for p in peers if p is not None]
        if mine is None or not peers:
            return "n/a"
        best = max(peers) if higher_is_better else min(peers)
        if best == 0:
            return "n/a (best peer 0)"
        r = mine / best
        if higher_is_better:
            return f"{r:.2f}x"
        return f"{r:.3f} ({best / mine:.1f}x less)" if mine > 0 else f"{r:.3f}"

    reps = get("mlinfra", "epoch", "reps", source="ipc-cache")
    step_ms = get("mlinfra", "step", "step_ms") or 10
    stop_after = get("mlinfra", "step", "batches")
    lines = [
        "| measure | mlinfra | HF datasets | torch DataLoader (HF) | torch DataLoader (IPC mmap) "
        "| ratio mlinfra / best peer |",
        "|---|---|---|---|---|---|",
    ]

    def row(label, mine, bench, key, digits, higher_is_better):
        peers = [get(side, bench, key) for side, _ in PEERS]
        cells = [fmt(mine, digits)] + [fmt(p, digits) for p in peers]
        lines.append(f"| {label} | " + " | ".join(cells) + f" | {ratio(mine, peers, higher_is_better)} |")

    for source, what in (("ipc-cache", "mlinfra from its IPC cache"),
                         ("parquet", "mlinfra straight from Parquet")):
        row(f"shuffled epoch, samples/s, median of {reps} ({what})",
            get("mlinfra", "epoch", "samples_per_s", source=source), "epoch", "samples_per_s", 0, True)
    for source, what in (("ipc-cache", "mlinfra from its IPC cache"),
                         ("parquet", "mlinfra straight from Parquet")):
        row(f"time to first batch, ms, median ({what})",
            get("mlinfra", "epoch", "first_batch_ms", source=source), "epoch", "first_batch_ms", 1, False)
    row(f"wait after the first batch, ms, {step_ms} ms step x {stop_after} batches "
        "(target 0; mlinfra from its IPC cache)",
        get("mlinfra", "step", "wait_ms"), "step", "wait_ms", 1, False)
    conv = [get(side, "convert", "convert_s") for side, _ in PEERS]
    lines.append(
        "| one-time conversion before the first epoch, s (mlinfra: IPC cache build, probe process "
        "incl.; HF: from_parquet to its Arrow cache; torch rows reuse HF's / data.py's files) | "
        f"{fmt(get('mlinfra', 'convert', 'convert_s'), 2)} | {fmt(conv[0], 2)} | n/a | n/a | |"
    )
    lines.append(
        f"| ↳ HF `.shuffle(seed)` alone, ms (inside HF's first-batch time) | | "
        f"{fmt(get('hf-datasets', 'epoch', 'shuffle_ms'), 1)} | | | |"
    )
    print("\n".join(lines))
    for r in rows:
        if r.get("side") == "versions":
            print("\nversions: " + ", ".join(f"{k} {v}" for k, v in r.items() if k != "side"))
    missing = [name for side, name in PEERS if get(side, "epoch", "samples_per_s") is None]
    if missing:
        print(f"\npeers that did not run: {', '.join(missing)} (see the log above)")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("versions")

    def common(p, workers=True):
        p.add_argument("--dir", required=True)
        p.add_argument("--reps", type=int, default=5)
        p.add_argument("--batch", type=int, default=256)
        p.add_argument("--seed", type=int, default=0)
        p.add_argument("--step-ms", type=int, default=10, help="0 skips the step measurement")
        p.add_argument("--stop-after", type=int, default=100)
        if workers:
            p.add_argument("--workers", type=int, default=2)

    m = sub.add_parser("mlinfra")
    common(m)
    m.add_argument("--probe", required=True)
    common(sub.add_parser("hf"), workers=False)
    t = sub.add_parser("torch")
    common(t)
    t.add_argument("--source", choices=["hf", "ipc"], required=True)
    r = sub.add_parser("report")
    r.add_argument("files", nargs="+")
    args = parser.parse_args()
    {"versions": versions, "mlinfra": mlinfra, "hf": hf, "torch": torch_peer,
     "report": report}[args.command](args)


if __name__ == "__main__":
    sys.exit(main())
