#!/usr/bin/env bash
# Seeds the fuzz corpora (fuzz/corpus/TARGET/, not committed) from the external test corpora
# and from files the tests generate. Needs MLINFRA_TESTDATA (see the README).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
data="${MLINFRA_TESTDATA:?set MLINFRA_TESTDATA to the directory holding parquet-testing and arrow-testing}"
mkdir -p "$here"/corpus/{parquet_open_scan,ipc_open,tensor_open}
cp "$data"/parquet-testing/data/*.parquet "$data"/parquet-testing/bad_data/* \
   "$data"/arrow-testing/data/parquet/fuzzing/* "$here/corpus/parquet_open_scan/"
cp "$data"/arrow-testing/data/arrow-ipc-file/* \
   "$data"/arrow-testing/data/arrow-ipc-stream/integration/*/*.arrow_file "$here/corpus/ipc_open/" 2>/dev/null || true
cp "$here"/../mlinfra-data/tests/it/tensor_files/fixtures/reference.{gguf,safetensors} "$here/corpus/tensor_open/"
for target in parquet_open_scan ipc_open tensor_open; do
  echo "$target: $(ls "$here/corpus/$target" | wc -l) seed files"
done
