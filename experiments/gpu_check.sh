#!/usr/bin/env bash
# One prepared GPU session (issues #5 and #16, the accelerator rows of the README): timings of the
# default and accelerator configs on the card, then a validation-scored sweep of the best.py
# recipe (seeds, a longer schedule, one-trick-off ablations, elastic distortion) run as several
# concurrent processes on the one GPU, then seed ensembles scored on validation and test.
#
#   OUT=gpu_out DEADLINE_S=500 bash experiments/gpu_check.sh
#   OUT=gpu_out DEADLINE_S=500 ISSUE16=1 SKIP_TIMINGS=1 SWEEP=0 bash experiments/gpu_check.sh   # #16
#
# It works offline from a copy of this checkout: $MNIST_IDX_DIR (default .devdata/mnist) holds the
# IDX files (read without TensorFlow: machines with JAX but no TensorFlow work). Wheels in .whl/ (missing small packages) are installed first; if the smoke
# run fails with the machine's own flax/optax/orbax, the ones in .whl_alt/ (this project's tested
# versions) are tried. Everything it reports lands in $OUT: log.txt, summaries.jsonl (one line per
# run: its summary.json plus the run name), ensembles.jsonl, runs.tar.gz (metrics and configs).
set -u
OUT=${OUT:-gpu_out}; mkdir -p "$OUT"
START=$(date +%s); DEADLINE_S=${DEADLINE_S:-500}; CONCURRENCY=${CONCURRENCY:-6}
RUNS=${RUNS:-/tmp/mnist_runs}; mkdir -p "$RUNS"
export MNIST_IDX_DIR=${MNIST_IDX_DIR:-$PWD/.devdata/mnist}
export TFDS_DATA_DIR=${TFDS_DATA_DIR:-$PWD/.devdata/tfds}
export PYTHONUNBUFFERED=1 TF_CPP_MIN_LOG_LEVEL=2
PY=${PY:-python3}
log() { echo "[$(( $(date +%s) - START ))s] $*" | tee -a "$OUT/log.txt"; }
left() { echo $(( DEADLINE_S - ($(date +%s) - START) )); }

if ls .whl/*.whl >/dev/null 2>&1; then
  $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .whl/*.whl
  export PYTHONPATH=/tmp/site:$PWD
else
  export PYTHONPATH=$PWD
fi
nvidia-smi -L 2>&1 | tee -a "$OUT/log.txt"
versions() {
  $PY -c 'import jax, flax, optax, orbax.checkpoint as o, numpy
print("jax", jax.__version__, "flax", flax.__version__, "optax", optax.__version__,
      "orbax", o.__version__ if hasattr(o, "__version__") else "?", "numpy", numpy.__version__)
print(jax.devices())' 2>&1 | tee -a "$OUT/log.txt"
}
versions

train() {  # train NAME TIMEOUT ARGS...: one run, its summary appended to summaries.jsonl
  local name=$1 limit=$2; shift 2
  local t0=$(date +%s) remaining=$(left)
  [ "$remaining" -lt "$limit" ] && limit=$remaining
  [ "$limit" -lt 5 ] && { log "skipped $name (deadline)"; return 1; }
  timeout "$limit" $PY -m mnist_flax.cli train --config.progress_bar=False \
    --config.workdir="$RUNS/$name" "$@" > "$RUNS/$name.log" 2>&1
  local rc=$?
  log "$name rc=$rc wall=$(( $(date +%s) - t0 ))s :: $(grep -E 'test accuracy' "$RUNS/$name.log" | tail -1)"
  if [ -f "$RUNS/$name/summary.json" ]; then
    $PY -c 'import json, sys; s = json.load(open(sys.argv[1])); s["run"] = sys.argv[2]; s["wall_s"] = int(sys.argv[3]); print(json.dumps(s))' \
      "$RUNS/$name/summary.json" "$name" "$(( $(date +%s) - t0 ))" >> "$OUT/summaries.jsonl"
  else
    tail -25 "$RUNS/$name.log" | tee -a "$OUT/log.txt"
  fi
  return $rc
}

# 1. Smoke run; fall back to this project's tested library versions if the machine's fail.
SMOKE=(--config default --config.num_epochs=1 --config.train_limit=6000
       --config.validation_size=1000)
if ! train smoke 150 "${SMOKE[@]}"; then
  log "smoke run failed with the machine's libraries; trying .whl_alt"
  $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site_alt .whl_alt/*.whl
  export PYTHONPATH=/tmp/site_alt:$PYTHONPATH
  versions
  rm -rf "$RUNS/smoke"
  train smoke 150 "${SMOKE[@]}" || { log "smoke run failed twice; stopping"; exit 1; }
fi

# 2. Timings, one process alone on the GPU (SKIP_TIMINGS=1 skips them).
if [ "${SKIP_TIMINGS:-0}" != 1 ]; then
  train default 120 --config default
  train accelerator 150 --config accelerator
fi

# 2b. Issue #16's recipes, one process at a time (ISSUE16=1): speedrun (5 seeds), fast995 and
# fastbest (3 seeds each), best (3 seeds), each a whole `mnist-flax train` process; then the
# reference CNN's images/s. summaries.jsonl has each run's accuracy and training seconds, the
# log each process's wall time.
if [ "${ISSUE16:-0}" = 1 ]; then
  for s in 0 1 2 3 4; do train "speedrun-s$s" 60 --config speedrun --config.seed=$s; done
  for cfg in fast995 fastbest best; do
    for s in 0 1 2; do train "$cfg-s$s" 300 --config "$cfg" --config.seed=$s; done
  done
  if [ "$(left)" -ge 30 ]; then
    timeout "$(( $(left) > 90 ? 90 : $(left) ))" $PY experiments/benchmark.py \
      --config default --steps 300 --peak-gflops 1 2>&1 | tee -a "$OUT/log.txt"
  else
    log "skipped the reference CNN benchmark (deadline)"
  fi
fi

# 3. The sweep: validation-scored (5,000 held out), several processes share the GPU.
export XLA_PYTHON_CLIENT_MEM_FRACTION=0.1
BEST=(--config best --config.validation_size=5000)
if [ "${SWEEP:-1}" = 0 ]; then
JOBS=()
elif [ "${SWEEP:-1}" = 1 ]; then  # seeds, a longer schedule, one-trick-off ablations
JOBS=(
  "best-s0|${BEST[*]} --config.seed=0"
  "best-s1|${BEST[*]} --config.seed=1"
  "best-s2|${BEST[*]} --config.seed=2"
  "best-e30-s0|${BEST[*]} --config.seed=0 --config.num_epochs=30"
  "best-e30-s1|${BEST[*]} --config.seed=1 --config.num_epochs=30"
  "best-e30-s2|${BEST[*]} --config.seed=2 --config.num_epochs=30"
  "noaug-s0|${BEST[*]} --config.seed=0 --config.augment.translate=0 --config.augment.rotate=0 --config.augment.scale=0 --config.augment.shear=0"
  "nols-s0|${BEST[*]} --config.seed=0 --config.label_smoothing=0"
  "nodrop-s0|${BEST[*]} --config.seed=0 --config.model_kwargs.dropout=0"
  "nowd-s0|${BEST[*]} --config.seed=0 --config.weight_decay=0"
  "elastic-s0|${BEST[*]} --config.seed=0 --config.augment.elastic_alpha=34"
  "noema-s0|${BEST[*]} --config.seed=0 --config.ema_decay=0"
)
elif [ "${SWEEP:-1}" = 3 ]; then  # other architectures (An et al. M3/M5) as ensemble members
  AN=(--config experiments/configs/an_cnn.py)
  JOBS=()
  for s in 0 1 2; do JOBS+=("m5-s$s|${AN[*]} --config.seed=$s" "m3-s$s|${AN[*]} --config.model=m3 --config.seed=$s"); done
else  # SWEEP=2: members for mixed-recipe ensembles (5 seeds of best, 3 of three variants)
  NOAUG="--config.augment.translate=0 --config.augment.rotate=0 --config.augment.scale=0 --config.augment.shear=0"
  JOBS=()
  for s in 0 1 2 3 4; do JOBS+=("best-s$s|${BEST[*]} --config.seed=$s"); done
  for s in 0 1 2; do
    JOBS+=("nols-s$s|${BEST[*]} --config.seed=$s --config.label_smoothing=0")
    JOBS+=("noaug-s$s|${BEST[*]} --config.seed=$s $NOAUG")
    JOBS+=("nodrop-s$s|${BEST[*]} --config.seed=$s --config.model_kwargs.dropout=0")
  done
fi
for job in "${JOBS[@]}"; do
  name=${job%%|*}; args=${job#*|}
  while [ "$(jobs -rp | wc -l)" -ge "$CONCURRENCY" ]; do wait -n; done
  remaining=$(left)
  if [ "$remaining" -lt 40 ]; then log "skipped $name (deadline)"; continue; fi
  # shellcheck disable=SC2086
  train "$name" $(( remaining - 35 )) $args &
  sleep 2
done
wait

# 4. Seed ensembles, scored on validation (how one would choose) and on test (report); the
# members' probabilities (no TTA) go to probs.npz for choosing other combinations offline.
export XLA_PYTHON_CLIENT_MEM_FRACTION=0.5
timeout $(( $(left) > 30 ? $(left) : 30 )) $PY - "$RUNS" "$OUT" >> "$OUT/ensembles.jsonl" 2>> "$OUT/log.txt" <<'EOF'
import json, pathlib, sys
import numpy as np
from mnist_flax import data
from mnist_flax.inference import ensemble, predict
runs, out = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2])
done = sorted(p.parent.name for p in runs.glob('*/summary.json')
              if json.loads(p.read_text()).get('validation_size') == 5000)
arrays = {}
for name in done:
  member = predict.load_classifier(runs / name)
  if 'val_labels' not in arrays:
    ds = data.load_datasets(member.config)
    arrays.update(val_labels=ds.validation.labels, test_labels=ds.test.labels)
    images = {'val': ds.validation.images, 'test': ds.test.images}
  for split in ('val', 'test'):
    arrays[f'{split}__{name}'] = np.concatenate([
        ensemble.view_probabilities(member, images[split][i:i + 2500])
        for i in range(0, len(images[split]), 2500)]).astype(np.float32)
np.savez_compressed(out / 'probs.npz', **arrays)
for group in ('best', 'best-e30'):
  members = [str(runs / f'{group}-s{s}') for s in range(3) if f'{group}-s{s}' in done]
  if len(members) < 2:
    continue
  for tta in ('none', 'shift_rotate'):
    for split in ('validation', 'test'):
      r = ensemble.evaluate_ensemble(members, tta=tta, split=split)
      print(json.dumps({'group': group, 'n': len(members), 'tta': tta, 'split': split,
                        'accuracy': r['accuracy'],
                        'members': [m['accuracy'] for m in r['members']]}), flush=True)
EOF
cat "$OUT/ensembles.jsonl" | tee -a "$OUT/log.txt"
tar czf "$OUT/runs.tar.gz" -C "$RUNS" --exclude=checkpoints . 2>/dev/null
log "done"
