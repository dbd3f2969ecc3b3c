#!/usr/bin/env bash
# Builds the libFuzzer harnesses (fuzz/fuzz_*.cpp: clang, ASan + UBSan, CPU only) and runs each on its seed corpus
# (fuzz/corpus/<target>) for a fixed time, one harness per core at a time; fails when any harness finds a crash, a
# sanitizer report, a hang, a leak or an allocation over the limit.
#   bash tools/fuzz.sh                    every harness
#   bash tools/fuzz.sh labels torch_pt    those (labels cache safetensors yaml_data yaml_hyp yaml_model torch_pt)
#   Y5_FUZZ_SECONDS    time per harness (default 20)        Y5_FUZZ_BUILD_DIR  build folder (default build-fuzz)
#   Y5_FUZZ_RSS_MB     memory limit, also per allocation (default 2048)
#   Y5_FUZZ_TIMEOUT    seconds one input may take (default 10)
# The input that failed is saved as <build>/crashes/<target>/crash-* (or leak-*, timeout-*, oom-*); reproduce
# with `<build>/fuzz_<target> FILE`, then add it to tests/fixtures/fuzz/ and tests/test_fuzz_regressions.cpp.
# New inputs the fuzzer finds collect in <build>/corpus/<target> (kept between runs; the seeds stay small).
set -euo pipefail
cd "$(dirname "$0")/.."
all=(labels cache safetensors yaml_data yaml_hyp yaml_model torch_pt)
targets=("$@")
((${#targets[@]})) || targets=("${all[@]}")
build="${Y5_FUZZ_BUILD_DIR:-build-fuzz}"
secs="${Y5_FUZZ_SECONDS:-20}"
rss="${Y5_FUZZ_RSS_MB:-2048}"
timeout="${Y5_FUZZ_TIMEOUT:-10}"
command -v clang++ >/dev/null || { echo "fuzz.sh: clang++ not found (bash tools/setup.sh installs clang)" >&2; exit 1; }

CC=clang CXX=clang++ cmake -S . -B "$build" -DCMAKE_BUILD_TYPE=Release -DY5_FUZZ=ON >/dev/null
cmake --build "$build" -j "$(nproc)" --target "${targets[@]/#/fuzz_}"

export UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1${UBSAN_OPTIONS:+:$UBSAN_OPTIONS}"
# One harness per core at a time (each is one process, one thread); their logs are read when all have ended.
for t in "${targets[@]}"; do
  while (($(jobs -rp | wc -l) >= $(nproc))); do wait -n || true; done
  mkdir -p "$build/corpus/$t" "$build/crashes/$t"
  echo "fuzz.sh: fuzz_$t for ${secs} s"
  ( rc=0
    "$build/fuzz_$t" -max_total_time="$secs" -rss_limit_mb="$rss" -timeout="$timeout" -print_final_stats=1 \
      -artifact_prefix="$build/crashes/$t/" "$build/corpus/$t" "fuzz/corpus/$t" > "$build/fuzz_$t.log" 2>&1 || rc=$?
    echo "$rc" > "$build/fuzz_$t.rc" ) &
done
wait
failed=()
for t in "${targets[@]}"; do
  if [ "$(cat "$build/fuzz_$t.rc")" != 0 ]; then
    tail -n 60 "$build/fuzz_$t.log"
    failed+=("$t")
  fi
  echo "fuzz_$t: $(grep -E "^stat::number_of_executed_units|^Done [0-9]+ runs" "$build/fuzz_$t.log" | tail -n 1)"
done
if ((${#failed[@]})); then
  echo "fuzz.sh: FAILED: ${failed[*]} (inputs in $build/crashes/, logs $build/fuzz_<target>.log)" >&2
  exit 1
fi
echo "fuzz.sh: ${#targets[@]} harnesses, ${secs} s each, $(nproc) at a time, no crash"
