#!/usr/bin/env bash
# Issue #16's figures in one command, one run after another (never two at once: 2 cores).
#   MNIST_IDX_DIR=/work/shared/mnist PEER_TORCH_PYTHON=/path/to/torch-venv/bin/python \
#     bash experiments/bench_issue16.sh [OUT_DIR]        (about 20 minutes on an idle 2-core CPU)
# 1. the reference CNN's throughput (default.py, batch 128), the three peers side by side with
#    ratios, the speedrun's 5 seeds (cold and warm compilation cache, process phases), and the
#    scaling table (seconds per epoch vs batch size and CPU devices);
# 2. the 99.5% recipe (fast995.py), 3 seeds.
set -eu
cd "$(dirname "$0")/.."
OUT=${1:-/tmp/mnist_flax_issue16}
PY=${PYTHON:-python}
mkdir -p "$OUT"
uptime | tee "$OUT/load_start.txt"
"$PY" experiments/benchmark.py --config default --steps 300 \
  --seeds-config speedrun --seeds 5 --target 0.99 --warm --phases \
  --peers flax,keras,torch --peer-epochs "${PEER_EPOCHS:-4}" --scaling \
  --config.workdir="$OUT/speed" --json "$OUT/speed.json" | tee "$OUT/speed.txt"
"$PY" experiments/benchmark.py --config fast995 --no-throughput \
  --seeds 3 --target 0.995 --phases --peak-gflops 1 \
  --config.workdir="$OUT/fast995" --json "$OUT/fast995.json" | tee "$OUT/fast995.txt"
uptime | tee "$OUT/load_end.txt"
