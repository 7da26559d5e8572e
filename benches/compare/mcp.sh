#!/usr/bin/env bash
# Side-by-side MCP tool-call benchmark (issue 26, item 10): round-trip latency and calls/s of
# a trivial tool on mlinfra-agent's runtime (the mcp_conformance_server example, release) and
# on FastMCP (benches/compare/fastmcp_server.py, pinned by scripts/fastmcp-venv), in one run,
# over stdio and over Streamable HTTP on 127.0.0.1. Target: 10x FastMCP's calls/s on both.
#
#   benches/compare/mcp.sh                          # 5000 calls after 200 warm-up, 3 rounds
#   CALLS=2000 ROUNDS=5 TRANSPORTS=http benches/compare/mcp.sh
#
# Both servers expose `test_simple_text` (no arguments, a fixed 44-byte text) and are driven
# by the same client, the mcp_bench example: raw JSON-RPC over the child's pipes or one
# keep-alive HTTP/1.1 connection, one call in flight, every reply checked. (The Python SDK's
# ClientSession alone costs ~1.3 ms a call, which would hide the servers' difference.) Each
# run is a fresh server, handshake, $WARMUP untimed calls, then $CALLS timed ones. Runs are
# interleaved, ours then FastMCP's, $ROUNDS rounds per transport, so drift in the machine's
# load hits both; the table gives the median over rounds and the ratio of medians, with the
# per-round ratios beside it. Raw JSON lines stay in $out (printed at the end).
#
# The build machine has 2 shared cores: the client and the server each want one, and any
# other work on the machine (a build, CI) takes from both; the load average is printed before
# and after. Read the ratios, not the absolute figures.
#
# Environment: CALLS (5000), WARMUP (200), ROUNDS (3), TRANSPORTS ("stdio http"), PORT (18432),
# MCP_BENCH and MCP_CONFORMANCE_SERVER (built example binaries: skip the cargo build, both
# must be set), CARGO_TARGET_DIR (default: the shared ~/.cache/mlinfra-target).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."

calls=${CALLS:-5000}
warmup=${WARMUP:-200}
rounds=${ROUNDS:-3}
transports=${TRANSPORTS:-stdio http}
port=${PORT:-18432}
out=$(mktemp -d "${TMPDIR:-/tmp}/mlinfra-mcp-bench.XXXXXX")
command_line="CALLS=$calls WARMUP=$warmup ROUNDS=$rounds TRANSPORTS=\"$transports\" benches/compare/mcp.sh"

if [[ -n "${MCP_BENCH:-}" && -n "${MCP_CONFORMANCE_SERVER:-}" ]]; then
    bench=$MCP_BENCH
    ours=$MCP_CONFORMANCE_SERVER
    command_line="MCP_BENCH=$bench MCP_CONFORMANCE_SERVER=$ours $command_line"
else
    export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$HOME/.cache/mlinfra-target}
    printf '== building mcp_bench and mcp_conformance_server (release)\n' >&2
    cargo build --release --quiet -p mlinfra-examples --example mcp_bench \
        --example mcp_conformance_server
    bench=$CARGO_TARGET_DIR/release/examples/mcp_bench
    ours=$CARGO_TARGET_DIR/release/examples/mcp_conformance_server
fi
python=$(scripts/fastmcp-venv | tail -n 1)
peer_script=$PWD/benches/compare/fastmcp_server.py
# mcp_bench splits its --stdio command on whitespace.
for path in "$ours" "$python" "$peer_script"; do
    [[ $path != *[[:space:]]* ]] || { printf 'mcp.sh: %s has spaces\n' "$path" >&2; exit 1; }
done
versions=$("$python" -c "import importlib.metadata as m, platform
print(f\"fastmcp {m.version('fastmcp')}, mcp {m.version('mcp')}, uvicorn {m.version('uvicorn')}, Python {platform.python_version()}\")")
printf '== peer: %s\n' "$versions" >&2

server=
stop_server() {
    if [[ -n $server ]]; then
        kill -TERM "$server" 2>/dev/null || true
        wait "$server" 2>/dev/null || true
        server=
    fi
}
trap stop_server EXIT

# Waits (up to 60 s) until the HTTP server answers anything on the port.
wait_listening() {
    for _ in $(seq 300); do
        if curl -s -o /dev/null "http://127.0.0.1:$port/mcp"; then return 0; fi
        kill -0 "$server" 2>/dev/null || { echo "the server exited; see $1" >&2; exit 1; }
        sleep 0.2
    done
    echo "the server did not start listening; see $1" >&2
    exit 1
}

# run NAME TRANSPORT ROUND: one mcp_bench run against a fresh server, its line to results.
run() {
    local name=$1 transport=$2 round=$3 log=$out/$1-$2-$3.log
    local -a target
    if [[ $transport == stdio ]]; then
        if [[ $name == mlinfra ]]; then
            target=(--stdio "$ours --stdio")
        else
            target=(--stdio "$python $peer_script")
        fi
    else
        if [[ $name == mlinfra ]]; then
            "$ours" --http "127.0.0.1:$port" >"$log.server" 2>&1 &
        else
            "$python" "$peer_script" --http "$port" >"$log.server" 2>&1 &
        fi
        server=$!
        wait_listening "$log.server"
        target=(--http "http://127.0.0.1:$port/mcp")
    fi
    if ! "$bench" "${target[@]}" --calls "$calls" --warmup "$warmup" >"$log" 2>"$log.err"; then
        printf 'mcp_bench failed against %s over %s:\n' "$name" "$transport" >&2
        cat "$log.err" >&2
        exit 1
    fi
    stop_server
    sed "s/^{/{\"server\":\"$name\",\"round\":$round,/" "$log" | tee -a "$out/results.jsonl" >&2
}

load() { printf '== load average (1, 5, 15 min) %s: %s on %s cores\n' "$1" "$(cut -d' ' -f1-3 /proc/loadavg)" "$(nproc)" >&2; }
load before
for transport in $transports; do
    for round in $(seq "$rounds"); do
        printf '== %s, round %s of %s\n' "$transport" "$round" "$rounds" >&2
        run mlinfra "$transport" "$round"
        run FastMCP "$transport" "$round"
    done
done
load after

"$python" - "$out/results.jsonl" <<'PY'
import json, statistics, sys
rows = [json.loads(line) for line in open(sys.argv[1])]
med = lambda xs: statistics.median(xs)
print("\n| transport | server | calls/s | p50 (µs) | p99 (µs) | mean (µs) | ours / FastMCP (calls/s) | per round |")
print("|---|---|---|---|---|---|---|---|")
for transport in dict.fromkeys(r["transport"] for r in rows):
    runs = {name: [r for r in rows if r["transport"] == transport and r["server"] == name]
            for name in ("mlinfra", "FastMCP")}
    stats = {name: {k: med([r[k] for r in rs]) for k in ("calls_per_s", "p50_us", "p99_us", "mean_us")}
             for name, rs in runs.items() if rs}
    ratio = per_round = ""
    if len(stats) == 2:
        ratio = f"{stats['mlinfra']['calls_per_s'] / stats['FastMCP']['calls_per_s']:.2f}x"
        peer = {r["round"]: r["calls_per_s"] for r in runs["FastMCP"]}
        per_round = ", ".join(f"{r['calls_per_s'] / peer[r['round']]:.2f}x"
                              for r in runs["mlinfra"] if r["round"] in peer)
    for name, s in stats.items():
        mine = name == "mlinfra"
        print(f"| {transport} | {name} | {s['calls_per_s']:.0f} | {s['p50_us']:.1f} | "
              f"{s['p99_us']:.1f} | {s['mean_us']:.1f} | {ratio if mine else ''} | "
              f"{per_round if mine else ''} |")
PY
printf '\npeer: %s\n' "$versions"
printf 'command: %s\n' "$command_line"
printf '\nraw results: %s\n' "$out" >&2
