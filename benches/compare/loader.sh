#!/usr/bin/env bash
# Side-by-side benchmark of mlinfra-loader against the Python loaders people use, in one run:
# one exact-shuffled epoch, batches of 256, over 100k rows of (emb f32x64, label i64).
#
#   benches/compare/loader.sh            # 5 reps; writes the dataset once, then reuses it
#   REPS=3 benches/compare/loader.sh
#
# 1. A venv with pyarrow, numpy, datasets and torch at $MLINFRA_LOADER_BENCH_VENV (default
#    ~/.cache/mlinfra/venvs/loader-bench), created on first use. Never inside the repository.
#    torch comes from PyPI, CUDA wheels and all (~5 GB; it runs CPU-only here); if that fails
#    or takes over $TORCH_INSTALL_TIMEOUT s, torch alone without its dependencies plus its
#    pure-Python ones. If torch still does not import, the torch peers are skipped, the table
#    says so, and the reason is kept in the venv (remove $venv/torch-install-failed to retry).
# 2. data.py write makes the dataset once under $MLINFRA_BENCH_DATA (default
#    ~/.cache/mlinfra/bench-data)/loader-emb64-rows$ROWS: data.parquet, data.arrow (IPC file,
#    8192-row batches); the loader_probe example (release) builds mlinfra's IPC cache from it
#    in mlinfra-cache/, and HF datasets its Arrow cache in hf-cache/.
# 3. The peers, each for $REPS timed epochs (medians), after an untimed warm-up:
#    - mlinfra (loader_probe, --workers $WORKERS): from its IPC cache, straight from Parquet,
#      and with a simulated $STEP_MS ms train step over the first $STOP_AFTER batches;
#    - HF datasets: Dataset.from_parquet, then .shuffle(seed) and
#      .with_format("numpy").iter(batch_size) each epoch;
#    - torch DataLoader(batch_size, shuffle=True, num_workers=$WORKERS) over the HF dataset
#      (with_format("torch")) and over a per-row map-style Dataset on the memory-mapped
#      data.arrow (the idiomatic baseline, not a batched sampler).
#    Timing definitions (the same start on every side: building the epoch's loader, after the
#    data is open) are in loader.py's docstring; the one-time conversions are timed apart.
# 4. One Markdown table with the ratios. The raw JSON lines stay in $out (printed at the end).
#
# Environment: ROWS, REPS, BATCH, WORKERS, SEED, STEP_MS (0 skips the step rows), STOP_AFTER,
# TORCH (0 skips the torch peers), TORCH_INSTALL_TIMEOUT (s), MLINFRA_LOADER_BENCH_VENV,
# MLINFRA_BENCH_DATA, CARGO_TARGET_DIR (where the probe is built), LOADER_PROBE (a loader_probe
# binary built already: skips the cargo build, e.g. while uncommitted changes in the work tree
# would make that build a real one, or to compare two builds).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."

rows=${ROWS:-100000}
reps=${REPS:-5}
batch=${BATCH:-256}
workers=${WORKERS:-2}
seed=${SEED:-0}
step_ms=${STEP_MS:-10}
stop_after=${STOP_AFTER:-100}
want_torch=${TORCH:-1}
torch_install_timeout=${TORCH_INSTALL_TIMEOUT:-900}
probe=${LOADER_PROBE:-}
venv=${MLINFRA_LOADER_BENCH_VENV:-$HOME/.cache/mlinfra/venvs/loader-bench}
data_root=${MLINFRA_BENCH_DATA:-$HOME/.cache/mlinfra/bench-data}
data=$data_root/loader-emb64-rows$rows
out=$(mktemp -d "${TMPDIR:-/tmp}/mlinfra-loader-compare.XXXXXX")
command_line="ROWS=$rows REPS=$reps BATCH=$batch WORKERS=$workers SEED=$seed STEP_MS=$step_ms STOP_AFTER=$stop_after TORCH=$want_torch${probe:+ LOADER_PROBE=$probe} benches/compare/loader.sh"

case $venv in
    "$PWD"/*) printf 'the venv %s must be outside the repository\n' "$venv" >&2; exit 1 ;;
esac
if ! "$venv/bin/python" -c 'import pyarrow, numpy, datasets' 2>/dev/null; then
    printf '== creating %s\n' "$venv" >&2
    python3 -m venv "$venv"
    "$venv/bin/pip" install --quiet --upgrade pip
    "$venv/bin/pip" install --quiet pyarrow numpy datasets
fi
py=$venv/bin/python

torch_why=
if [[ $want_torch == 0 ]]; then
    torch_why="TORCH=0"
elif ! "$py" -c 'import torch' 2>/dev/null; then
    if [[ -e $venv/torch-install-failed ]]; then
        torch_why="install failed earlier: $(cat "$venv/torch-install-failed")"
    else
        printf '== installing torch from PyPI (CUDA wheels included, ~5 GB)\n' >&2
        if ! timeout "$torch_install_timeout" "$venv/bin/pip" install --quiet torch; then
            printf '== full torch install failed or passed %s s; torch without its deps\n' \
                "$torch_install_timeout" >&2
            "$venv/bin/pip" install --quiet --no-deps torch || true
            "$venv/bin/pip" install --quiet filelock typing-extensions sympy networkx jinja2 \
                fsspec mpmath MarkupSafe || true
        fi
        if ! why=$("$py" -c 'import torch' 2>&1); then
            torch_why="torch does not import: $(printf '%s' "$why" | tail -n 1)"
            printf '%s\n' "$torch_why" >"$venv/torch-install-failed"
        fi
    fi
fi
"$py" benches/compare/loader.py versions | tee "$out/versions.jsonl" >&2

printf '== dataset %s\n' "$data" >&2
"$py" benches/compare/data.py write --dir "$data" --rows "$rows"

if [[ -n $probe ]]; then
    printf '== loader_probe: %s (LOADER_PROBE; no build)\n' "$probe" >&2
else
    printf '== building loader_probe (release)\n' >&2
    cargo build --release --quiet -p mlinfra-examples --example loader_probe
    probe=${CARGO_TARGET_DIR:-target}/release/examples/loader_probe
fi
# mlinfra's IPC cache of data.parquet, built on first use (open_or_create: reused after).
"$probe" --data "$data/data.parquet" --cache "$data/mlinfra-cache" --batch "$batch" \
    --shuffle none --stop-after 1 >/dev/null

# Other work on the machine skews wall times; the load average says how busy it was.
load() { printf '== load average (1, 5, 15 min) %s: %s on %s cores\n' "$1" "$(cut -d' ' -f1-3 /proc/loadavg)" "$(nproc)" >&2; }
load before
knobs=(--dir "$data" --reps "$reps" --batch "$batch" --seed "$seed" --step-ms "$step_ms" --stop-after "$stop_after")
ran=()
skipped=()
printf '== mlinfra\n' >&2
"$py" benches/compare/loader.py mlinfra --probe "$probe" --workers "$workers" "${knobs[@]}" \
    | tee "$out/mlinfra.jsonl" >&2
ran+=(mlinfra)

printf '== HF datasets\n' >&2
if "$py" benches/compare/loader.py hf "${knobs[@]}" | tee "$out/hf.jsonl" >&2; then
    ran+=("HF datasets")
else
    skipped+=("HF datasets (failed, see above)")
fi

if [[ -z $torch_why ]]; then
    for source in hf ipc; do
        printf '== torch DataLoader (%s)\n' "$source" >&2
        if "$py" benches/compare/loader.py torch --source "$source" --workers "$workers" "${knobs[@]}" \
            | tee "$out/torch-$source.jsonl" >&2; then
            ran+=("torch DataLoader ($source)")
        else
            skipped+=("torch DataLoader ($source) (failed, see above)")
        fi
    done
else
    skipped+=("torch DataLoader (hf, ipc): $torch_why")
fi
load after

printf '\n'
"$py" benches/compare/loader.py report "$out"/*.jsonl
printf '\npeers run: %s\n' "$(IFS=,; printf '%s' "${ran[*]}" | sed 's/,/, /g')"
if ((${#skipped[@]})); then
    printf "peers skipped: %s\n" "${skipped[@]}"
fi
printf 'command: %s\n' "$command_line"
printf '\nraw results: %s\n' "$out" >&2
