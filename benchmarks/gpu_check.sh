#!/usr/bin/env bash
# The GPU check: the whole test suite with PERCEPBENCH_TEST_DEVICE=cuda (tests/test_gpu.py first, then
# every other test file), the CUDA rows of the DreamSim embedding benchmark (fp32, bf16 autocast and
# bf16 + torch.compile at batch 256: images/s and the fraction of bf16 peak), then the end-to-end NIGHTS-
# layout run on CUDA (percepbench fp32 / bf16 / bf16+compile against the official procedure in fp32).
# Each of the four steps has its own time limit, so one that overruns still leaves time to the others.
# Run from the repository root on the GPU machine:
#
#     bash benchmarks/gpu_check.sh [OUT_DIR]   # default: $OUT, else ./gpu-check
#
# With a .gpu-carry/ folder (benchmarks/gpu_prepare.sh), its wheels, percepbench's included, are
# installed into $SITE (default /tmp/site) first and its fixtures are used; otherwise percepbench and its
# dependencies must already be importable and ../shared/fixtures must exist.
# Settings (environment): PERCEPBENCH_TEST_DEVICE (default cuda); GPU_TESTS_TIMEOUT, SUITE_TIMEOUT,
# BENCH_TIMEOUT, E2E_TIMEOUT (seconds, default 90, 150, 75 and 150: under 8 minutes with the install);
# SUITE (what the second step runs, default tests: a shortened dry run names a few test files);
# SUITE_WORKERS (pytest-xdist workers of both test steps when xdist is importable, default 8; 0: one
# process); BENCH_SETTINGS (default cuda:fp32,cuda:bf16,cuda:bf16+compile) and BENCH_ARGS (default
# --batches 256 --repeats 3 --variants ensemble,dino_vitb16) pass through to the embedding benchmark;
# E2E_SETTINGS (default cuda:fp32,cuda:bf16,cuda:bf16+compile) and E2E_ARGS (default --triplets 1000
# --rounds 1 --batch-size 256 --official-workers 8) to the end-to-end one.
#
# Writes into OUT_DIR (10 files): environment.txt, gpu_tests.xml/.log, suite_tests.xml/.log,
# dreamsim_embed_speed.json/.log, nights_end_to_end.json/.md/.log, and steps.txt (each step's exit status
# and seconds; 124: timed out).
set -uo pipefail
OUT_DIR="${1:-${OUT:-gpu-check}}"
PY="${PYTHON:-python3}"
SITE="${SITE:-/tmp/site}"
SUITE="${SUITE:-tests}"
export PERCEPBENCH_TEST_DEVICE="${PERCEPBENCH_TEST_DEVICE:-cuda}"
mkdir -p "$OUT_DIR"
: >"$OUT_DIR/steps.txt"
if [ -d .gpu-carry/wheels ]; then
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" \
        .gpu-carry/wheels/*.whl || exit 1
    export PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}" PATH="$SITE/bin:$PATH"
fi
if [ -d .gpu-carry/fixtures ]; then
    export PERCEPBENCH_FIXTURES="$PWD/.gpu-carry/fixtures"
fi
export PYTHONUNBUFFERED=1
# -P for every Python started from here (pytest-xdist workers, the tests' subprocesses) as well: the
# checkout's percepbench/ folder must never shadow the installed package
export PYTHONSAFEPATH=1
"$PY" -P - <<'PYEOF' 2>&1 | tee "$OUT_DIR/environment.txt"
import os, platform, torch, percepbench
print("python", platform.python_version(), "| torch", torch.__version__, "| percepbench", percepbench.__version__, "from", percepbench.__path__[0])
print("cuda", torch.cuda.is_available(), torch.cuda.get_device_name(0) if torch.cuda.is_available() else "-")
print("PERCEPBENCH_TEST_DEVICE", os.environ["PERCEPBENCH_TEST_DEVICE"], "| cores", os.cpu_count())
PYEOF

# pytest-xdist, where importable, spreads the tests over SUITE_WORKERS processes of a few threads each
parallel=()
workers="${SUITE_WORKERS:-8}"
if [ "$workers" -gt 0 ] && "$PY" -P -c "import xdist" 2>/dev/null; then
    parallel=(-n "$workers")
    threads=$(( $(nproc) / workers ))
    export OMP_NUM_THREADS="$(( threads > 0 ? threads : 1 ))"
fi
echo "test steps: ${parallel[*]:-one process each}; suite: ${SUITE}" | tee -a "$OUT_DIR/environment.txt"

status=0
# step NAME LIMIT_S COMMAND...: run it under `timeout` (SIGINT first, so pytest still writes its report),
# tee its output to NAME.log, record its exit status and duration in steps.txt
step() {
    local name="$1" limit="$2"
    shift 2
    local t0=$SECONDS rc
    timeout -s INT -k 30 "$limit" "$@" 2>&1 | tee "$OUT_DIR/$name.log"
    rc=${PIPESTATUS[0]}
    echo "$name: exit $rc after $(( SECONDS - t0 )) s (limit $limit s)" | tee -a "$OUT_DIR/steps.txt"
    [ "$rc" -eq 0 ] || status=1
}
# -P: the checkout's percepbench/ folder must not shadow the installed package (whose metrics_registry/,
# tasks/ and reports/ are mapped into it); the tests run from the checkout's tests/
step gpu_tests "${GPU_TESTS_TIMEOUT:-90}" "$PY" -P -m pytest -q -p no:cacheprovider -rs \
    ${parallel[@]+"${parallel[@]}"} tests/test_gpu.py --junitxml "$OUT_DIR/gpu_tests.xml"
# shellcheck disable=SC2086  # SUITE may name several paths
step suite_tests "${SUITE_TIMEOUT:-150}" "$PY" -P -m pytest -q -p no:cacheprovider -rs \
    ${parallel[@]+"${parallel[@]}"} $SUITE --ignore tests/test_gpu.py --junitxml "$OUT_DIR/suite_tests.xml"
# shellcheck disable=SC2086  # BENCH_ARGS may hold several arguments
step dreamsim_embed_speed "${BENCH_TIMEOUT:-75}" "$PY" -P benchmarks/dreamsim_embed_speed.py \
    --settings "${BENCH_SETTINGS:-cuda:fp32,cuda:bf16,cuda:bf16+compile}" \
    ${BENCH_ARGS:---batches 256 --repeats 3 --variants ensemble,dino_vitb16} \
    --out "$OUT_DIR/dreamsim_embed_speed.json"
# shellcheck disable=SC2086  # E2E_ARGS may hold several arguments
step nights_end_to_end "${E2E_TIMEOUT:-150}" "$PY" -P benchmarks/nights_end_to_end.py \
    --settings "${E2E_SETTINGS:-cuda:fp32,cuda:bf16,cuda:bf16+compile}" --device "${E2E_DEVICE:-cuda}" \
    ${E2E_ARGS:---triplets 1000 --rounds 1 --batch-size 256 --official-workers 8} --out "$OUT_DIR"
exit $status
