#!/usr/bin/env bash
# Prepare what the GPU check (benchmarks/gpu_check.sh) needs on a lent GPU machine: its image has Python
# 3.12, torch, timm, peft, torchmetrics, pandas, seaborn, pyarrow, scikit-image/-learn, pytest and
# pytest-xdist, but none of the packages below, no network, and no ../shared beside the checkout. Run HERE
# (a machine with the package registry), from the repository root:
#
#     bash benchmarks/gpu_prepare.sh          # -> .gpu-carry/ (ignored by git; carry it along)
#
# .gpu-carry/wheels: py3.12 wheels of the same versions as this environment (ruff included, for
# tests/test_lint.py), the official dreamsim package, and percepbench's own wheel built from the working
# tree.
# .gpu-carry/fixtures: a copy of ../shared/fixtures (about 5 MB), which the test suite reads and from whose
# adapter configs the speed benchmark writes random official-format LoRA adapters.
# PYVER=3.11 fetches wheels for a dry run of gpu_check.sh on this machine instead.
set -euo pipefail
PY="${PYTHON:-.venv/bin/python}"
DEST="${1:-.gpu-carry}"
FIXTURES="${FIXTURES:-../shared/fixtures}"
rm -rf "$DEST" && mkdir -p "$DEST/wheels"
version() { "$PY" -c "import importlib.metadata as m; print(m.version('$1'))"; }
pins=()
for pkg in lpips piq open_clip_torch ftfy wcwidth datasets dill multiprocess ruff; do
    pins+=("$pkg==$(version "$pkg")")
done
"$PY" -m pip download -q --no-deps --only-binary=:all: --python-version "${PYVER:-3.12}" --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    -d "$DEST/wheels" "${pins[@]}"
# the official dreamsim package (the benchmark's and the parity tests' oracle) is published as an sdist
"$PY" -m pip wheel -q --no-deps -w "$DEST/wheels" "dreamsim==$(version dreamsim)"
"$PY" -m pip wheel -q --no-deps --no-build-isolation -w "$DEST/wheels" .
cp -R "$FIXTURES" "$DEST/fixtures"
ls "$DEST"/*
du -sh "$DEST"
