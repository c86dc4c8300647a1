#!/usr/bin/env bash
# One visit to a lent GPU, in one call, from the repository root (see benchmarks/gpu/README.md):
#   record the machine -> build and install fastnn with CUDA -> CUDA tests -> the rest of the suite ->
#   fastnn bench --device cuda -> a summary printed last.
# Every phase runs under its own wall-clock cap inside a total budget (FASTNN_VISIT_TOTAL seconds,
# default 540: the run tool's per-call limit is 600), and the visit goes on to the next phase when
# one fails or times out, so a call always returns what it got. Files written under $OUT (8; the
# run tool returns at most 8):
#   info.txt                 machine, versions, commit, then the phase table (the summary)
#   build.log                pip install -v output
#   tests.log                the CUDA tests (-k cuda); compute-sanitizer's runs; last, the rest of
#                            the suite (-k 'not cuda') in the budget left
#   bench.log                fastnn bench's progress lines
#   bench/results.md, bench/results.json, bench/ratios.png
#   gemm_tiles.md            the A/B runs of the switchable candidates (benchmarks/gpu/ab.py), the
#                            kernels of one training step (benchmarks/gpu/step_launches.py), dropout
#                            at every bit count (benchmarks/gpu/dropout_rows.cu), the
#                            GEMM tile-shape sweep (benchmarks/gpu/gemm_tiles.cu), compiled
#                            beside the build and run after the bench, then Nsight Compute's
#                            sections for the production kernel (gemm_tiles --profile)
#   (tests.log also takes compute-sanitizer's memcheck and racecheck runs of
#    benchmarks/gpu/sanitize_kernels.py, last)
#
# Environment:
#   COMMIT=<sha>             the commit being measured (the tree arrives without .git); else the
#                            file benchmarks/gpu/COMMIT, else `git rev-parse`, else 'unknown'
#   OUT=<dir>                where results go (the run tool sets it; default: a new temp dir)
#   FASTNN_VISIT_DRY=1       a rehearsal without a GPU: no nvidia-smi, no pip install; the
#                            fastnn importable from the tree (an emulated in-place build:
#                            FASTNN_CUDA=EMULATE /work/dev-build.sh) is tested and benchmarked
#   FASTNN_VISIT_TOTAL=<s>   total budget in seconds (default 540)
#   FASTNN_VISIT_CUDA=EMULATE  rehearses the pip install path without a GPU (default ON)
#   FASTNN_VISIT_BENCH_ARGS  extra arguments for fastnn bench (e.g. --no-compile, --quick; a
#                            --time-limit here overrides the visit's)
#   FASTNN_VISIT_SKIP="a b"  phases not to run (e.g. "tests-rest ncu-gemm ncu-stalls" for a second
#                            visit in a session whose CPU-side changes were tested off the GPU)
#   PYTHON=<python>          default: python3
set -uo pipefail
cd "$(dirname "$0")/../.."
ROOT=$PWD
PY=${PYTHON:-$(command -v python3 || command -v python)}
DRY=${FASTNN_VISIT_DRY:-0}
TOTAL=${FASTNN_VISIT_TOTAL:-540}
OUT=${OUT:-$(mktemp -d)}
mkdir -p "$OUT/bench"
INFO=$OUT/info.txt
START=$SECONDS
export PYTHONUNBUFFERED=1 CMAKE_BUILD_PARALLEL_LEVEL=${CMAKE_BUILD_PARALLEL_LEVEL:-16}
# CMake finds nvcc on the PATH (or through CUDACXX)
if ! command -v nvcc >/dev/null && [ -x /usr/local/cuda/bin/nvcc ]; then export PATH=/usr/local/cuda/bin:$PATH; fi
: >"$INFO"
PHASES=()

left() { echo $((TOTAL - (SECONDS - START))); }

# cap WANT RESERVE: WANT seconds, or less so that RESERVE seconds stay for the phases after
cap() {
  local c=$(($(left) - $2))
  [ "$c" -gt "$1" ] && c=$1
  echo "$c"
}

# phase NAME CAP LOG DIR CMD...: runs CMD in DIR under `timeout`, appending to LOG; records rc and seconds
phase() {
  local name=$1 limit=$2 log=$3 dir=$4
  shift 4
  if [[ " ${FASTNN_VISIT_SKIP:-} " == *" $name "* ]]; then
    PHASES+=("$(printf '%-12s skipped: FASTNN_VISIT_SKIP' "$name")")
    echo "== $name: skipped (FASTNN_VISIT_SKIP)"
    return 99
  fi
  if [ "$limit" -lt 10 ]; then
    PHASES+=("$(printf '%-12s skipped: only %ss of the budget left' "$name" "$limit")")
    echo "== $name: skipped (budget)"
    return 99
  fi
  echo "== $name (cap ${limit}s; $(left)s of ${TOTAL}s left)"
  echo "== $name: $* (cap ${limit}s)" >>"$log"
  local t0=$SECONDS
  (cd "$dir" && exec timeout -k 10 "$limit" "$@") >>"$log" 2>&1
  local rc=$?
  echo >>"$log"  # a killed pytest leaves its line of dots open
  local what="rc=$rc"
  [ $rc -eq 124 ] || [ $rc -eq 137 ] && what="TIMED OUT after ${limit}s (rc=$rc)"
  PHASES+=("$(printf '%-12s %-40s %4ss' "$name" "$what" $((SECONDS - t0)))")
  echo "   $name: $what in $((SECONDS - t0))s"
  return $rc
}

# -- the machine ---------------------------------------------------------------------------------
commit=${COMMIT:-}
[ -z "$commit" ] && [ -s benchmarks/gpu/COMMIT ] && commit=$(head -n 1 benchmarks/gpu/COMMIT)
[ -z "$commit" ] && commit=$(git rev-parse HEAD 2>/dev/null || true)
commit=${commit:-unknown}
export FASTNN_COMMIT=$commit  # fastnn bench records it when there is no .git
{
  echo "date:    $(date -u '+%Y-%m-%d %H:%M:%S UTC')"
  echo "commit:  $commit"
  echo "mode:    $([ "$DRY" = 1 ] && echo 'DRY rehearsal (no nvidia-smi, no pip install)' || echo 'GPU visit')"
  echo "host:    $(uname -srm); $(nproc) cores; $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ //')"
  echo "python:  $PY ($("$PY" --version 2>&1))"
  echo "torch:   $(timeout 60 "$PY" -c 'import torch; print(torch.__version__, "cuda", torch.version.cuda, "available", torch.cuda.is_available())' 2>&1 | tail -n 1)"
  # the tests' other dependencies: a failure only this machine shows may come from their versions
  echo "others:  $(timeout 60 "$PY" -c 'import importlib.metadata as m
out = []
for d in ("numpy", "scipy", "scikit-learn", "pytest", "pytest-xdist", "pybind11"):
    try: out.append(f"{d} {m.version(d)}")
    except m.PackageNotFoundError: out.append(f"{d} none")
print(", ".join(out))' 2>&1 | tail -n 1)"
  if [ "$DRY" != 1 ]; then
    echo "-- nvidia-smi -L"
    timeout 30 nvidia-smi -L 2>&1
    echo "-- nvidia-smi (name, driver, compute capability, memory; then clocks)"
    timeout 30 nvidia-smi --query-gpu=name,driver_version,compute_cap,memory.total --format=csv 2>&1
    timeout 30 nvidia-smi --query-gpu=clocks.max.sm,clocks.max.memory,clocks.sm,power.limit --format=csv 2>&1
  fi
  echo "-- nvcc --version"
  timeout 30 nvcc --version 2>&1 | tail -n 2 || echo "nvcc not found"
} >>"$INFO" 2>&1
cat "$INFO"

# -- build and install -----------------------------------------------------------------------------
built=0
if [ "$DRY" = 1 ]; then
  # the tree's own build (e.g. FASTNN_CUDA=EMULATE /work/dev-build.sh); tests run from tests/, so
  # the tree must be on the path
  export PYTHONPATH=$ROOT${PYTHONPATH:+:$PYTHONPATH}
  echo "DRY: no pip install; using the fastnn importable from $ROOT" >"$OUT/build.log"
  (cd tests && "$PY" -c 'import fastnn; print(fastnn.build_info())') >>"$OUT/build.log" 2>&1 && built=1
  PHASES+=("$(printf '%-12s %s' build "DRY: skipped (in-tree build, built=$built)")")
else
  # sm_XY of this card only: half the nvcc time of the default (80;90)
  arch=$(timeout 30 nvidia-smi --query-gpu=compute_cap --format=csv,noheader 2>/dev/null | head -n 1 | tr -d ' .')
  arch_flag=()
  [[ "$arch" =~ ^[0-9]+$ ]] && arch_flag=("--config-settings=cmake.define.CMAKE_CUDA_ARCHITECTURES=$arch")
  # The GEMM tile sweep (benchmarks/gpu/gemm_tiles.cu, one nvcc process: 260 s on 2 cores here at
  # 2026-11-26, with the stream-K and 8 x 8 candidates) compiles beside the build and tests
  if [[ "$arch" =~ ^[0-9]+$ ]]; then
    (timeout 480 nvcc -std=c++17 -O3 -arch=sm_$arch -Icsrc benchmarks/gpu/gemm_tiles.cu -o "$ROOT/build-gemm-tiles" \
      >"$OUT/gemm_tiles.md" 2>&1 || echo "gemm_tiles: nvcc failed or timed out" >>"$OUT/gemm_tiles.md") &
    tiles_pid=$!
  fi
  # FASTNN_CUDA=ON: a build that silently left CUDA out would fail here, not in the tests
  phase build "$(cap 300 200)" "$OUT/build.log" "$ROOT" \
    env FASTNN_CUDA="${FASTNN_VISIT_CUDA:-ON}" "$PY" -m pip install --no-build-isolation --no-deps -v "${arch_flag[@]}" . && built=1
fi
if [ $built = 1 ]; then
  (cd tests && timeout 60 "$PY" -c 'import fastnn, sys; i = fastnn.build_info(); print("fastnn build_info:", i);
sys.exit(0 if i["cuda_available"] else 1)') >>"$INFO" 2>&1 || { echo "fastnn has no usable CUDA device" | tee -a "$INFO"; }
  # which C++ runtime the test processes load (the first visit's tests crashed in libstdc++ code)
  (cd tests && timeout 60 "$PY" -c 'import torch, sklearn, numpy, fastnn
libs = sorted({l.split()[-1] for l in open("/proc/self/maps") if "libstdc++" in l or "libgcc_s" in l})
print("C++ runtime loaded next to torch:", ", ".join(libs) or "none")') >>"$INFO" 2>&1
fi
tail -n 1 "$INFO"

# -- tests -----------------------------------------------------------------------------------------
# From tests/, so that `python -m pytest` imports the installed fastnn, not the source tree.
# The whole suite in two runs: the CUDA tests here, then the rest (-k 'not cuda') last of all, in
# whatever budget the GPU's own phases leave (CI runs them too): the 2026-11-30 visit ran them
# here for 85 s and had no time left for Nsight Compute. None runs twice.
# With pytest-xdist (the GPU image has it), 4 worker processes: faster, and a test that crashes
# its process fails alone (the worker is replaced) instead of ending the phase.
xdist=()
"$PY" -c 'import xdist' 2>/dev/null && xdist=(-n 4)
# Each of the 4 workers' fastnn and torch take a quarter of the cores: 4 x 16 threads on 16
# cores, each pool spinning between ops, left the second visit's CPU half 102 s into a run
# that takes 78 s on this 2-core machine.
per_worker=$(( $(nproc) / 4 > 0 ? $(nproc) / 4 : 1 ))
threads=(env FASTNN_NUM_THREADS="$per_worker" OMP_NUM_THREADS="$per_worker")
[ ${#xdist[@]} -eq 0 ] && threads=()

# run_tests NAME WANT RESERVE KEXPR. -v: each result is logged as it happens, so a phase cut short
# by its cap still names the tests that failed before (the second visit lost one failure's name
# that way).
run_tests() {
  if [ $built != 1 ]; then
    PHASES+=("$(printf '%-12s skipped: no build' "$1")")
    return
  fi
  phase "$1" "$(cap "$2" "$3")" "$OUT/tests.log" "$ROOT/tests" \
    "${threads[@]}" "$PY" -m pytest -v --maxfail=25 -p no:cacheprovider "${xdist[@]}" -k "$4" .
  [ $? -ne 99 ] && PHASES+=("             pytest: $(grep -E 'passed|failed|error|%\]' "$OUT/tests.log" | tail -n 1 | cut -c1-100)")
}

# The bench has taken 46-47 s on an H200: 120 s stay for it.
run_tests tests-cuda 150 120 cuda

# -- benchmarks ------------------------------------------------------------------------------------
if [ $built = 1 ]; then
  bcap=$(cap 100000 160)  # 160 s stay for the A/B runs, the tile sweep and compute-sanitizer
  # --time-limit (counted from after torch's import and CUDA start-up, ~15 s) stops the suite
  # starting rows in time to write its chart before the cap
  # shellcheck disable=SC2086
  phase bench "$bcap" "$OUT/bench.log" "$ROOT/tests" "$PY" -m fastnn bench --device cuda --output "$OUT/bench" \
    --time-limit $((bcap > 120 ? bcap - 60 : bcap / 2)) ${FASTNN_VISIT_BENCH_ARGS:-}
else
  PHASES+=("bench        skipped: no build")
fi

# -- A/B runs of the candidates behind environment switches -------------------------------------------
# benchmarks/gpu/ab.py: BatchNorm's one-read pipeline against the chunked path, stream-K against the
# K split at the one-wave GEMMs, each beside PyTorch, interleaved in one process; its table goes to
# the head of gemm_tiles.md (the run tool returns 8 files).
if [ $built = 1 ]; then
  phase ab "$(cap 45 120)" "$OUT/gemm_tiles.md" "$ROOT/tests" "$PY" "$ROOT/benchmarks/gpu/ab.py"
  # the kernels of one lecture-model step at batch 128 and 1024 and the captured graph's node count:
  # what fusion would remove (at batch 128 the graph step is bound by its nodes)
  phase launches "$(cap 30 110)" "$OUT/gemm_tiles.md" "$ROOT/tests" "$PY" "$ROOT/benchmarks/gpu/step_launches.py"
fi

# -- dropout at every bit count ------------------------------------------------------------------------
# benchmarks/gpu/dropout_rows.cu: the relu + dropout forward and the mask kernel at 1-16 bits an
# element against a device copy, every output checked; seconds to build and run. Appended to
# gemm_tiles.md (the run tool returns 8 files).
if [ $built = 1 ] && [ "$DRY" != 1 ] && [[ "${arch:-}" =~ ^[0-9]+$ ]]; then
  phase dropout-rows "$(cap 40 100)" "$OUT/gemm_tiles.md" "$ROOT" bash -c \
    "nvcc -std=c++17 -O3 -arch=sm_$arch -Icsrc -DCANDIDATE benchmarks/gpu/dropout_rows.cu -o build-dropout-rows && ./build-dropout-rows"
fi

# -- GEMM tile sweep ---------------------------------------------------------------------------------
if [ -n "${tiles_pid:-}" ]; then
  wait "$tiles_pid"
  if [ -x "$ROOT/build-gemm-tiles" ]; then
    phase gemm-tiles "$(cap 90 5)" "$OUT/gemm_tiles.md" "$ROOT" "$ROOT/build-gemm-tiles"
  else
    PHASES+=("gemm-tiles   not built (see gemm_tiles.md)")
  fi
fi

# -- Nsight Compute on the production GEMM ------------------------------------------------------------
# ncu's warp-state, scheduler and pipe sections for the production kernel at the one-wave batch-1024
# shapes and the 4096 square (gemm_tiles --profile), appended to gemm_tiles.md: why a kernel sits
# where it does against cuBLAS. --clock-control none: the card's clocks are left alone.
if [ -x "$ROOT/build-gemm-tiles" ] && [ "$DRY" != 1 ]; then
  NCU=$(command -v ncu || ls /usr/local/cuda/bin/ncu /opt/nvidia/nsight-compute/*/ncu 2>/dev/null | head -n 1 || true)
  if [ -n "$NCU" ]; then
    phase ncu-gemm "$(cap 90 100)" "$OUT/gemm_tiles.md" "$ROOT" "$NCU" --clock-control none \
      --section SpeedOfLight --section Occupancy --section LaunchStats --section WarpStateStats \
      --section SchedulerStats --section ComputeWorkloadAnalysis --section MemoryWorkloadAnalysis \
      --section InstructionStats -k 'regex:gemm_(async_|streamk_)?kernel' "$ROOT/build-gemm-tiles" --profile
    # the stall reasons the sections above only summarise (cycles per issued instruction, by reason):
    # a phase of its own, so that a metric this ncu lacks costs this table, not the sections'
    phase ncu-stalls "$(cap 60 90)" "$OUT/gemm_tiles.md" "$ROOT" "$NCU" --clock-control none \
      --metrics 'regex:smsp__average_warps_issue_stalled_.*_per_issue_active\.ratio' \
      -k 'regex:gemm_(async_|streamk_)?kernel' "$ROOT/build-gemm-tiles" --profile
  else
    PHASES+=("ncu-gemm     ncu not found")
  fi
fi

# -- compute-sanitizer ---------------------------------------------------------------------------------
# benchmarks/gpu/sanitize_kernels.py runs every kernel family once (no torch) under memcheck
# (out-of-bounds, misaligned) and racecheck (shared-memory races); its log goes to tests.log (the
# run tool returns 8 files). A DRY rehearsal runs the script alone.
if [ $built = 1 ]; then
  SANITIZER=$(command -v compute-sanitizer || ls /usr/local/cuda/bin/compute-sanitizer 2>/dev/null || true)
  if [ "$DRY" = 1 ] || [ -z "$SANITIZER" ]; then
    phase sanitize "$(cap 60 5)" "$OUT/tests.log" "$ROOT/tests" "$PY" "$ROOT/benchmarks/gpu/sanitize_kernels.py"
    [ "$DRY" = 1 ] || PHASES+=("             (compute-sanitizer not found: the script ran alone)")
  else
    for tool in memcheck racecheck; do
      phase "$tool" "$(cap 90 5)" "$OUT/tests.log" "$ROOT/tests" \
        "$SANITIZER" --tool "$tool" --error-exitcode 1 "$PY" "$ROOT/benchmarks/gpu/sanitize_kernels.py"
    done
  fi
fi

# -- the rest of the suite, in what is left ----------------------------------------------------------
run_tests tests-rest 180 5 "not cuda"

# -- summary ---------------------------------------------------------------------------------------
{
  echo
  echo "======== summary ($((SECONDS - START))s of ${TOTAL}s)"
  if [ -f "$OUT/build.log" ]; then
    echo "-- tail of build.log"
    grep -v '^\s*$' "$OUT/build.log" | tail -n 6 | cut -c1-220
  fi
  if [ -f "$OUT/tests.log" ]; then
    echo "-- tests.log: failures, errors and closing lines"
    grep -E '^(FAILED|ERROR)|^E  | (FAILED|ERROR) |[0-9]+ (passed|failed)|^== (tests|sanitize|memcheck|racecheck)|sanitize_kernels|ERROR SUMMARY' \
      "$OUT/tests.log" | tail -n 18 | cut -c1-220
  fi
  if [ -f "$OUT/bench.log" ]; then
    echo "-- bench.log: start, errors, skipped rows, end (the table is in bench/results.md)"
    grep -E '^(GPU: .*peak|wrote|Traceback)|Error|skipped' "$OUT/bench.log" | grep -v '^|' | tail -n 12 | cut -c1-220
  fi
  echo "-- phases (name, result, seconds)"
  printf '%s\n' "${PHASES[@]}"
} >>"$INFO"
if [ -f "$OUT/bench/results.md" ]; then
  echo "======== bench/results.md"
  cat "$OUT/bench/results.md"
fi
if [ -f "$OUT/gemm_tiles.md" ]; then
  echo "======== gemm_tiles.md"
  grep -E '^\||gemm_tiles' "$OUT/gemm_tiles.md"
fi
sed -n '/^======== summary/,$p' "$INFO"
echo "files in $OUT:"
(cd "$OUT" && find . -type f | sort | sed 's/^/  /')
