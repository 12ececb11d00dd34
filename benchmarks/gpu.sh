#!/usr/bin/env bash
# Throughput on a machine with an NVIDIA GPU: Keras on JAX, batch sizes 16-64, --cpu-workers
# 0/4/8, over the 208-image set and over 2048x2048 mosaics; prints benchmarks/throughput.py's
# tables (MP/s and the ratio flow / raw), one block per batch size.
#
#   bash benchmarks/gpu.sh                 # segflow's dependencies from PyPI
#   bash benchmarks/gpu.sh WHEELS          # ...or from a folder of wheels (no network)
#
# A wheel folder for a machine without network, made on one with it (Python 3.12, Linux x86-64):
#   pip download --only-binary=:all: --python-version 3.12 --platform manylinux_2_28_x86_64 \
#       --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d WHEELS \
#       $(the dependencies printed by the python snippet below)
# JAX with CUDA must already be installed (`pip install "jax[cuda12]"`); TensorFlow and OpenVINO
# are not needed there. The shared DSB2018 set must lie at ../shared/data/dsb2018, or pass
# DATA=/path/to/dsb2018. Results go to stdout and, with SAVE=1, to
# benchmarks/results/throughput.txt, headed by the GPU's name.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
DATA=${DATA:-../shared/data/dsb2018}
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
"$PY" -c "import jax; gpus = [d for d in jax.devices() if d.platform == 'gpu']; \
assert gpus, 'JAX sees no GPU: install jax[cuda12]'; print('JAX', jax.__version__, gpus)"
# segflow and what it needs beside TensorFlow and OpenVINO (the GPU runs Keras on JAX)
deps=$("$PY" - <<'EOF'
import re, tomllib
deps = tomllib.load(open("pyproject.toml", "rb"))["project"]["dependencies"]
print(" ".join(d.split(";")[0].replace(" ", "") for d in deps
               if not re.match(r"(tensorflow|openvino)", d)))
EOF
)
if [ -n "${1:-}" ]; then
    "$PY" -m pip install -q --no-index --find-links "$1" $deps
else
    "$PY" -m pip install -q $deps
fi
"$PY" -m pip install -q --no-deps --no-build-isolation -e . || export PYTHONPATH=$PWD
export KERAS_BACKEND=jax
save=()
[ "${SAVE:-0}" = 1 ] && save=(--save)
for batch in 16 32 64; do
    "$PY" benchmarks/throughput.py --data-dir "$DATA" --engines keras --batch-size "$batch" \
        --shard-size 64 --cpu-workers 0 4 8 "${save[@]}"
done
"$PY" benchmarks/throughput.py --data-dir "$DATA" --engines keras --batch-size 32 \
    --shard-size 16 --mosaic 32 --cpu-workers 0 4 8 "${save[@]}"
