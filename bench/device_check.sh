#!/usr/bin/env bash
# The GPU checks of the GPU path (README "The GPU path") in ONE run of the `device` tool:
# CUDA kernel and batching tests, then `splice bench gpu` on a 1B-class shape. Results land in $OUT.
#
# The device image has PyTorch, Triton, peft and an older transformers, and no network. Prepare
# here once (wheels for the device's Python 3.12; the transformers this project is tested with):
#   echo /.whl/ >> .git/info/exclude
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#     --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
#     -d .whl transformers==5.25.0 tokenizers==0.23.3
# then call the device tool's run with command "bash bench/device_check.sh", carry [".whl"] and
# timeout_s 540. Each step is bounded so that the bench still runs if a test hangs.
set -uo pipefail
OUT=${OUT:-/tmp/splice-device}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
  || { echo "carry .whl (see the top of this script)"; exit 1; }
# Splice itself, without its dependencies (the image has them, or the wheels above do).
python3 -m pip install -q --no-index --no-deps --no-build-isolation --no-cache-dir --target /tmp/site . || exit 1
export PYTHONPATH=/tmp/site
nvidia-smi --query-gpu=name,memory.total,clocks.max.sm --format=csv | tee "$OUT/gpu.txt"
python3 -c "import torch, transformers, triton; print(torch.__version__, transformers.__version__, triton.__version__)" \
  | tee -a "$OUT/gpu.txt"
timeout 180 python3 -m pytest -q -m gpu -p no:cacheprovider tests/unit/test_kernels.py tests/gpu 2>&1 \
  | tail -40 | tee "$OUT/pytest.log"
timeout 300 python3 -m splice.bench.gpu --repeats 5 --json "$OUT/gpu.json" 2>&1 | tee "$OUT/bench.log"
