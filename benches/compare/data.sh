#!/usr/bin/env bash
# Side-by-side benchmark of mlinfra-data against pyarrow, in one run (docs/BENCHMARKS.md,
# "mlinfra-data"):
#
#   benches/compare/data.sh            # 2M rows; writes the files once, then reuses them
#   ROWS=200000 benches/compare/data.sh
#
# 1. A venv with pyarrow and numpy at $MLINFRA_BENCH_VENV (default
#    ~/.cache/mlinfra/venvs/pyarrow-bench), created on first use. Never inside the repository.
# 2. pyarrow writes the dataset once under $MLINFRA_BENCH_DATA (default
#    ~/.cache/mlinfra/bench-data): data.parquet (emb fixed_size_list<float32, 64> + label int64,
#    uncompressed, plain, 128 Ki-row row groups, 1 MiB data pages, page index) and two IPC
#    peers of the mlinfra cache (data.arrow in 8192-row batches, data-1batch.arrow).
# 3. pyarrow's scan (1 and 2 threads), dataset take and memory-mapped IPC take.
# 4. The Rust runner (benches/src/bin/data_compare.rs, release build) on the same file, plus the
#    mlinfra IPC cache built from it (in the same data directory).
# 5. One Markdown table with the ratios. The raw JSON lines stay in $out (printed at the end).
#
# Environment: ROWS, ROW_GROUP_ROWS, DATA_PAGE_SIZE (bytes), BATCH_SIZE (mlinfra's scan batch
# in rows; unset = the crate's default, sized in bytes), SCAN_REPS, TAKE_REPS, DATASET_TAKE_REPS (pyarrow's
# dataset take needs ~0.4 s a call, so it gets fewer reps), SEED.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."

rows=${ROWS:-2000000}
row_group_rows=${ROW_GROUP_ROWS:-131072}
data_page_size=${DATA_PAGE_SIZE:-1048576}
scan_reps=${SCAN_REPS:-5}
take_reps=${TAKE_REPS:-200}
dataset_take_reps=${DATASET_TAKE_REPS:-20}
seed=${SEED:-42}
batch_size=${BATCH_SIZE:-}
venv=${MLINFRA_BENCH_VENV:-$HOME/.cache/mlinfra/venvs/pyarrow-bench}
data_root=${MLINFRA_BENCH_DATA:-$HOME/.cache/mlinfra/bench-data}
data=$data_root/emb64-rows$rows-rg$row_group_rows-page$data_page_size
out=$(mktemp -d "${TMPDIR:-/tmp}/mlinfra-data-compare.XXXXXX")

if ! "$venv/bin/python" -c 'import pyarrow, numpy' 2>/dev/null; then
    printf '== creating %s\n' "$venv" >&2
    python3 -m venv "$venv"
    "$venv/bin/pip" install --quiet --upgrade pip
    "$venv/bin/pip" install --quiet pyarrow numpy
fi
py=$venv/bin/python
"$py" -c 'import pyarrow, numpy, platform; print(f"== pyarrow {pyarrow.__version__}, numpy {numpy.__version__}, python {platform.python_version()}")' >&2

printf '== dataset %s\n' "$data" >&2
"$py" benches/compare/data.py write --dir "$data" --rows "$rows" \
    --row-group-rows "$row_group_rows" --data-page-size "$data_page_size"

printf '== building the Rust runner (release)\n' >&2
cargo build --release --quiet -p mlinfra-benches --bin data_compare

# Other work on the machine skews wall times; the load average says how busy it was.
load() { printf '== load average (1, 5, 15 min) %s: %s on %s cores\n' "$1" "$(cut -d' ' -f1-3 /proc/loadavg)" "$(nproc)" >&2; }
load before
printf '== pyarrow\n' >&2
"$py" benches/compare/data.py bench --dir "$data" --scan-reps "$scan_reps" \
    --take-reps "$take_reps" --dataset-take-reps "$dataset_take_reps" --seed "$seed" \
    | tee "$out/pyarrow.jsonl" >&2

printf '== mlinfra\n' >&2
cargo run --release --quiet -p mlinfra-benches --bin data_compare -- \
    --data "$data/data.parquet" --cache "$data/mlinfra-cache" --threads 1,2 \
    --scan-reps "$scan_reps" ${batch_size:+--batch-size "$batch_size"} --take-reps "$take_reps" --seed "$seed" \
    | tee "$out/mlinfra.jsonl" >&2

load after
printf '\n'
"$py" benches/compare/data.py report "$out/pyarrow.jsonl" "$out/mlinfra.jsonl"
printf '\nraw results: %s\n' "$out" >&2
