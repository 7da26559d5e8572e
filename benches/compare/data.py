#!/usr/bin/env python3
"""The pyarrow half of benches/compare/data.sh, and the report that sets both halves side by side.

    data.py write  --dir DIR [--rows N] [--row-group-rows R] [--data-page-size B] [--seed S]
    data.py bench  --dir DIR [--scan-reps 5] [--take-rows 256] [--take-reps 200]
                   [--dataset-take-reps 20] [--take-warmup 5] [--seed 42]
    data.py report PYARROW.jsonl MLINFRA.jsonl

`write` writes DIR/data.parquet (the file both sides read) and two memory-mapped IPC peers of
the mlinfra IPC cache once: DIR/data.arrow in 8192-row batches (the cache's layout) and
DIR/data-1batch.arrow as one batch; a later call with the same parameters reuses them. `bench`
prints JSON lines in the same shape as the Rust runner (benches/src/bin/data_compare.rs);
`report` prints one Markdown table with ratios.

GB/s on both sides: decoded Arrow bytes of the two columns, rows x (64 x 4 + 8), validity
bitmaps not counted, divided by wall time (median of the reps). Takes use SplitMix64 from the
same seed as the Rust runner, so both sides take exactly the same rows.
"""

import argparse
import json
import os
import sys
import time

import numpy as np
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.ipc
import pyarrow.parquet as pq

COLUMNS = ["emb", "label"]
EMB_DIM = 64
MASK = (1 << 64) - 1


class SplitMix64:
    """The generator of mlinfra_benches::SplitMix64, bit for bit."""

    def __init__(self, seed):
        self.state = seed & MASK

    def next_u64(self):
        self.state = (self.state + 0x9E3779B97F4A7C15) & MASK
        z = self.state
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & MASK
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & MASK
        return z ^ (z >> 31)

    def indices(self, count, rows):
        return [self.next_u64() % rows for _ in range(count)]


# The reference outputs the Rust unit test pins too.
_check = SplitMix64(0)
assert _check.next_u64() == 0xE220A8397B1DCDAF and _check.next_u64() == 0x6E789E6AA1B965F4


def row_width(t):
    if pa.types.is_fixed_size_list(t):
        return t.list_size * row_width(t.value_type)
    return t.bit_width // 8


def decoded_bytes(batch_or_table):
    return sum(len(c) * row_width(c.type) for c in batch_or_table.columns)


def quantile(samples, q):
    """Nearest rank, as mlinfra_benches::quantile."""
    s = sorted(samples)
    rank = int(np.ceil(q * len(s)))
    return s[min(max(rank, 1), len(s)) - 1]


def emit(**fields):
    print(json.dumps({"side": "pyarrow", **fields}), flush=True)


def write(args):
    os.makedirs(args.dir, exist_ok=True)
    params = {
        "rows": args.rows,
        "row_group_rows": args.row_group_rows,
        "data_page_size": args.data_page_size,
        "seed": args.seed,
        "pyarrow": pa.__version__,
        "format": 2,
    }
    stamp = os.path.join(args.dir, "params.json")
    if os.path.exists(stamp):
        with open(stamp) as f:
            if json.load(f) == params:
                print(f"reusing {args.dir}", file=sys.stderr)
                return
    rng = np.random.default_rng(args.seed)
    values = rng.random(args.rows * EMB_DIM, dtype=np.float32) * 2 - 1
    emb = pa.FixedSizeListArray.from_arrays(pa.array(values), EMB_DIM)
    label = pa.array(rng.integers(0, 1000, args.rows, dtype=np.int64))
    table = pa.table({"emb": emb, "label": label})
    # Uncompressed, plain encoding (random floats gain nothing from a dictionary, and plain keeps
    # the decode the same for both columns), the page index written; nullable fields and, unless
    # asked otherwise, pyarrow's default 1 MiB data pages.
    pq.write_table(
        table,
        os.path.join(args.dir, "data.parquet"),
        row_group_size=args.row_group_rows,
        data_page_size=args.data_page_size,
        compression="none",
        use_dictionary=False,
        write_page_index=True,
    )
    # pyarrow's peers of the mlinfra IPC cache, uncompressed: 8192-row batches (the cache's
    # default batch size), and the whole table as one batch (a take without chunk lookups).
    for name, chunk in (("data.arrow", 8192), ("data-1batch.arrow", args.rows)):
        with pa.OSFile(os.path.join(args.dir, name), "wb") as sink:
            with pa.ipc.new_file(sink, table.schema) as writer:
                writer.write_table(table, max_chunksize=chunk)
    with open(stamp, "w") as f:
        json.dump(params, f)
    print(f"wrote {args.dir}", file=sys.stderr)


def timed(fn, reps):
    """Runs fn once untimed (page cache, allocator), then reps times; returns the wall seconds
    and the process CPU seconds (all threads) of each rep."""
    fn()
    wall, cpu = [], []
    for _ in range(reps):
        start, cpu_start = time.perf_counter(), time.process_time()
        fn()
        wall.append(time.perf_counter() - start)
        cpu.append(time.process_time() - cpu_start)
    return wall, cpu


def bench(args):
    parquet = os.path.join(args.dir, "data.parquet")
    rows = pq.ParquetFile(parquet).metadata.num_rows

    for threads in (1, 2):
        use_threads = threads > 1
        pa.set_cpu_count(threads)

        def read_table():
            table = pq.read_table(parquet, columns=COLUMNS, use_threads=use_threads)
            return table.num_rows, decoded_bytes(table)

        def to_batches():
            n = b = 0
            dataset = ds.dataset(parquet, format="parquet")
            for batch in dataset.to_batches(columns=COLUMNS, use_threads=use_threads):
                n += batch.num_rows
                b += decoded_bytes(batch)
            return n, b

        for name, fn in (("read_table", read_table), ("dataset.to_batches", to_batches)):
            n, b = fn()
            assert n == rows, (name, n, rows)
            seconds, cpu_seconds = timed(fn, args.scan_reps)
            median = quantile(seconds, 0.5)
            cpu = quantile(cpu_seconds, 0.5)
            emit(
                bench="scan",
                api=name,
                threads=threads,
                use_threads=use_threads,
                rows=n,
                bytes=b,
                reps=args.scan_reps,
                median_s=median,
                best_s=min(seconds),
                gbps=b / median / 1e9,
                best_gbps=b / min(seconds) / 1e9,
                cpu_s=cpu,
                gb_per_cpu_s=b / cpu / 1e9,
            )

    rng = SplitMix64(args.seed)
    index_sets = [
        rng.indices(args.take_rows, rows) for _ in range(args.take_warmup + args.take_reps)
    ]

    def takes(name, take, reps, **extra):
        for indices in index_sets[: args.take_warmup]:
            take(indices)
        millis = []
        for indices in index_sets[args.take_warmup : args.take_warmup + reps]:
            start = time.perf_counter()
            got = take(indices)
            millis.append((time.perf_counter() - start) * 1e3)
            assert got.num_rows == len(indices)
        emit(
            bench=name,
            rows=args.take_rows,
            reps=len(millis),
            p50_ms=quantile(millis, 0.5),
            p99_ms=quantile(millis, 0.99),
            **extra,
        )

    pa.set_cpu_count(os.cpu_count() or 1)
    dataset = ds.dataset(parquet, format="parquet")
    takes(
        "take_parquet",
        lambda idx: dataset.take(pa.array(idx, pa.uint64()), columns=COLUMNS),
        args.dataset_take_reps,
        api="pyarrow.dataset.take",
    )

    # read_all on a memory map is zero-copy; it runs once, outside the timing, as the mlinfra
    # cache is opened once.
    for name in ("data.arrow", "data-1batch.arrow"):
        table = pa.ipc.open_file(pa.memory_map(os.path.join(args.dir, name))).read_all()
        chunks = table.column("emb").num_chunks
        takes(
            "take_cache",
            lambda idx, table=table: table.take(pa.array(idx, pa.uint64())),
            args.take_reps,
            api=f"memory-mapped IPC Table.take, {chunks} batch{'es' if chunks > 1 else ''}",
            chunks=chunks,
        )


def load(path):
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip().startswith("{")]


def report(args):
    py = load(args.pyarrow)
    ours = load(args.mlinfra)

    def pick(rows, **match):
        found = [r for r in rows if all(r.get(k) == v for k, v in match.items())]
        return found

    lines = [
        "| benchmark | mlinfra | pyarrow | ratio | target | holds |",
        "|---|---|---|---|---|---|",
    ]
    for threads in (1, 2):
        mine = pick(ours, bench="scan", threads=threads)
        peers = pick(py, bench="scan", threads=threads)
        if not mine or not peers:
            continue
        m = mine[0]
        best = max(peers, key=lambda r: r["gbps"])
        plural = "s" if threads > 1 else ""
        seen = m.get("decode_threads_seen")
        for key, what in (
            ("gbps", f"median of {m['reps']}"),
            ("best_gbps", f"best of {m['reps']}"),
            ("gb_per_cpu_s", "per CPU-second"),
        ):
            if m.get(key) is None or best.get(key) is None:
                continue
            ratio = m[key] / best[key]
            first = key == "gbps"
            label = (
                f"full scan, {threads} thread{plural}, GB/s {what} (mlinfra decode threads "
                f"seen: {seen}; pyarrow {best['api']})"
                if first
                else f"↳ same, GB/s {what}"
            )
            lines.append(
                f"| {label} | {m[key]:.2f} | {best[key]:.2f} | {ratio:.2f}x | "
                f"{'>= 1.2x' if first else ''} | "
                f"{('yes' if ratio >= 1.2 else 'no') if first else ''} |"
            )
        for other in peers:
            if other is not best:
                lines.append(
                    f"| ↳ pyarrow {other['api']}, {threads} thread{plural}, GB/s median | "
                    f"| {other['gbps']:.2f} | {m['gbps'] / other['gbps']:.2f}x | | |"
                )
    targets = {"take_parquet": 5.0, "take_cache": 0.3}
    names = {
        "take_parquet": "take 256 random rows, Parquet (ms)",
        "take_cache": "take 256 random rows, IPC cache / memory-mapped IPC (ms)",
    }
    for bench_name, target in targets.items():
        mine = pick(ours, bench=bench_name)
        peer = pick(py, bench=bench_name)
        if not mine or not peer:
            continue
        m = mine[0]
        for p in peer:
            for q in ("p50", "p99"):
                key = f"{q}_ms"
                holds = ""
                target_text = ""
                if q == "p50" and p is peer[0]:
                    target_text = f"<= {target} ms"
                    holds = "yes" if m[key] <= target else "no"
                ratio = p[key] / m[key]
                verdict = f"{ratio:.1f}x faster" if ratio >= 1 else f"{1 / ratio:.1f}x slower"
                lines.append(
                    f"| {names[bench_name]} {q} (mlinfra {m['reps']} reps; pyarrow {p['api']}, "
                    f"{p['reps']} reps) | {m[key]:.3f} | {p[key]:.3f} | "
                    f"{verdict} | {target_text} | {holds} |"
                )
    for row in pick(ours, bench="take_parquet"):
        if "first_take_ms" in row:
            lines.append(
                f"| mlinfra Parquet take, first call after open (ms; maps the file, checks the "
                f"list pages it touches) | {row['first_take_ms']:.3f} | | | | |"
            )
    for row in pick(ours, bench="cache_open_or_create"):
        lines.append(
            f"| mlinfra IPC cache open_or_create (s; builds on first run) | "
            f"{row['seconds']:.2f} | | | | |"
        )
    print("\n".join(lines))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    w = sub.add_parser("write")
    w.add_argument("--dir", required=True)
    w.add_argument("--rows", type=int, default=2_000_000)
    w.add_argument("--row-group-rows", type=int, default=131_072)
    w.add_argument("--data-page-size", type=int, default=1 << 20)
    w.add_argument("--seed", type=int, default=1)
    b = sub.add_parser("bench")
    b.add_argument("--dir", required=True)
    b.add_argument("--scan-reps", type=int, default=5)
    b.add_argument("--take-rows", type=int, default=256)
    b.add_argument("--take-reps", type=int, default=200)
    b.add_argument("--dataset-take-reps", type=int, default=20)
    b.add_argument("--take-warmup", type=int, default=5)
    b.add_argument("--seed", type=int, default=42)
    r = sub.add_parser("report")
    r.add_argument("pyarrow")
    r.add_argument("mlinfra")
    args = parser.parse_args()
    {"write": write, "bench": bench, "report": report}[args.command](args)


if __name__ == "__main__":
    main()
