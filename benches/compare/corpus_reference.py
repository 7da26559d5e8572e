#!/usr/bin/env python3
"""Which Apache parquet-testing files pyarrow reads, as Rust source for the corpus test.

    corpus_reference.py DATA_DIR

The Rust test mlinfra-data/tests/it/corpus.rs pins the files pyarrow reads (with their row
counts) so that a regression that refuses one of them fails. This script recomputes that list:
it reads every `*.parquet` under DATA_DIR (recursively; `*.parquet.encrypted` is skipped) with
`pyarrow.parquet.read_table` at default options and prints the `PYARROW_READS` const on stdout,
sorted by path relative to DATA_DIR. Files pyarrow refuses are listed on stderr.
"""

import sys
from pathlib import Path

import pyarrow
import pyarrow.parquet as pq

COMMAND = (
    "~/.cache/mlinfra/venvs/pyarrow-bench/bin/python benches/compare/corpus_reference.py "
    "/work/shared/testdata/parquet-testing/data"
)


def main() -> None:
    if len(sys.argv) != 2:
        sys.exit(f"usage: {sys.argv[0]} DATA_DIR")
    data = Path(sys.argv[1])
    reads, refused = [], []
    for path in sorted(data.rglob("*.parquet"), key=lambda p: p.relative_to(data).as_posix()):
        name = path.relative_to(data).as_posix()
        try:
            reads.append((name, pq.read_table(path).num_rows))
        except Exception as e:  # noqa: BLE001 -- any refusal is a result here
            first = (str(e).splitlines() or [""])[0]
            refused.append((name, f"{type(e).__name__}: {first}"))

    print(f"// Generated with pyarrow {pyarrow.__version__} by: {COMMAND}")
    print("const PYARROW_READS: &[(&str, u64)] = &[")
    for name, rows in reads:
        print(f'    ("{name}", {rows}),')
    print("];")
    for name, error in refused:
        print(f"pyarrow refuses {name}: {error}", file=sys.stderr)


if __name__ == "__main__":
    main()
