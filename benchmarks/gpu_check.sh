#!/usr/bin/env bash
# The GPU check: tests/test_gpu.py (DreamSimMetric on CUDA against the CPU, bf16 autocast, the metric
# as a loss, the default benchmark on CUDA gated by the committed baseline) and the CUDA rows (fp32 and
# bf16 autocast) of the DreamSim speed benchmark. Run from the repository root on the GPU machine:
#
#     bash benchmarks/gpu_check.sh [OUT_DIR]   # default: $OUT, else ./gpu-check
#
# With a .gpu-carry/ folder (benchmarks/gpu_prepare.sh), its wheels, percepbench's included, are
# installed into $SITE (default /tmp/site) first and its fixtures are used; otherwise percepbench and its
# dependencies must already be importable and ../shared/fixtures must exist. BENCH_SETTINGS (default
# cuda:fp32,cuda:bf16) and BENCH_ARGS pass through to the benchmark.
set -uo pipefail
OUT_DIR="${1:-${OUT:-gpu-check}}"
PY="${PYTHON:-python3}"
SITE="${SITE:-/tmp/site}"
mkdir -p "$OUT_DIR"
if [ -d .gpu-carry/wheels ]; then
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" \
        .gpu-carry/wheels/*.whl || exit 1
    export PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}" PATH="$SITE/bin:$PATH"
fi
if [ -d .gpu-carry/fixtures ]; then
    export PERCEPBENCH_FIXTURES="$PWD/.gpu-carry/fixtures"
fi
export PYTHONUNBUFFERED=1
"$PY" -P - <<'PYEOF' 2>&1 | tee "$OUT_DIR/environment.txt"
import platform, torch, percepbench
print("python", platform.python_version(), "| torch", torch.__version__, "| percepbench", percepbench.__version__, "from", percepbench.__path__[0])
print("cuda", torch.cuda.is_available(), torch.cuda.get_device_name(0) if torch.cuda.is_available() else "-")
PYEOF
status=0
# -P: the checkout's percepbench/ folder must not shadow the installed package (whose metrics_registry/,
# tasks/ and reports/ are mapped into it); the tests run from the checkout's tests/
"$PY" -P -m pytest -q -p no:cacheprovider -rs tests/test_gpu.py --junitxml "$OUT_DIR/gpu_tests.xml" 2>&1 \
    | tee "$OUT_DIR/gpu_tests.log" || status=1
"$PY" -P benchmarks/dreamsim_embed_speed.py --settings "${BENCH_SETTINGS:-cuda:fp32,cuda:bf16}" ${BENCH_ARGS:-} \
    --out "$OUT_DIR/dreamsim_embed_speed.json" 2>&1 | tee "$OUT_DIR/dreamsim_embed_speed.log" || status=1
exit $status
