#!/usr/bin/env bash
# What two cores of this machine give work that shares nothing: a register-only loop run as one
# process, then as two processes at once, in alternating rounds. The ratio (2 × one's time /
# the slower pair member's time) is the ceiling of any 2-rank speed-up here; on whole idle
# cores it is 2.00x. Two loops:
#
#   fma  10 independent chains of AVX2 `_mm256_fmadd_ps` (what gemm's inner loop is made of)
#   int  a multiply / xorshift / add chain (integer units only)
#
#   benches/compare/cpu_ceiling.sh          # 8 rounds
#   ROUNDS=20 benches/compare/cpu_ceiling.sh
#
# Needs a C compiler (`cc`) and an x86-64 CPU with AVX2 and FMA. Prints one line per round
# and the median of each column. docs/BENCHMARKS.md (run T4) quotes it.
set -euo pipefail

rounds=${ROUNDS:-8}
dir=$(mktemp -d "${TMPDIR:-/tmp}/mlinfra-cpu-ceiling.XXXXXX")
trap 'rm -rf "$dir"' EXIT

cat > "$dir/loop.c" <<'C'
#include <immintrin.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec * 1e-9;
}

int main(int argc, char **argv) {
    long n = atol(argv[2]);
    double start = now();
    if (argv[1][0] == 'f') {
        __m256 acc[10];
        for (int i = 0; i < 10; i++) acc[i] = _mm256_set1_ps(i * 0.001f);
        __m256 b = _mm256_set1_ps(0.9999f), c = _mm256_set1_ps(0.0001f);
        for (long k = 0; k < n; k++)
            for (int i = 0; i < 10; i++) acc[i] = _mm256_fmadd_ps(acc[i], b, c);
        float sum = 0, out[8];
        for (int i = 0; i < 10; i++) { _mm256_storeu_ps(out, acc[i]); sum += out[0]; }
        printf("%.4f %f\n", now() - start, sum);
    } else {
        unsigned long x = 1, y = 2, z = 3;
        for (long k = 0; k < n; k++) {
            x = x * 6364136223846793005UL + 1;
            y ^= y << 13; y ^= y >> 7;
            z += x ^ y;
        }
        printf("%.4f %lu\n", now() - start, x + y + z);
    }
    return 0;
}
C
cc -O2 -mavx2 -mfma "$dir/loop.c" -o "$dir/loop"

# Seconds of one process; of the slower of two at once.
one() { "$dir/loop" "$1" "$2" | cut -d' ' -f1; }
two() { { "$dir/loop" "$1" "$2" & "$dir/loop" "$1" "$2"; wait; } | cut -d' ' -f1 | sort -g | tail -n 1; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f", 2 * a / b }'; }

echo "round fma int"
for round in $(seq 1 "$rounds"); do
    fma=$(ratio "$(one f 200000000)" "$(two f 200000000)")
    int=$(ratio "$(one i 700000000)" "$(two i 700000000)")
    echo "$round $fma $int"
done | tee "$dir/rounds"
median() { sort -g | awk '{ v[NR] = $1 } END { print v[int((NR + 1) / 2)] }'; }
echo "median $(cut -d' ' -f2 "$dir/rounds" | median)x $(cut -d' ' -f3 "$dir/rounds" | median)x"
