"""Best single-model recipe (issue #5): ConvBN + augmentation + EMA + label smoothing, AdamW,
warmup + cosine over 8 epochs; final EMA weights, no validation split (final training), no
test-set selection.

Run (one seed; repeat with --config.seed=1, 2 and ensemble them, see experiments/RESULTS.md):
  mnist-flax train --config experiments/configs/best.py --config.seed=0 \
      --config.workdir=checkpoints/best-e8-s0
  mnist-flax ensemble --workdir checkpoints/best-e8-s0 --workdir checkpoints/best-e8-s1 \
      --workdir checkpoints/best-e8-s2 --tta shift_rotate
Model selection runs (ablations) add --config.validation_size=5000 and compare validation accuracy.

Reach (experiments/RESULTS.md; 2-core Xeon CPU, JAX 0.10.2, 2026-11-26): 99.61% +- 0.04 test
accuracy over 3 seeds (99.66, 99.60, 99.58), about 17 min of training per seed on the idle
machine (1,067-1,226 s measured with other work beside some epochs); the 3-seed ensemble 99.63%,
99.66% with --tta shift_rotate. Issue #5's targets (99.65% mean, 99.75% ensemble) are NOT met.
"""

import ml_collections

from mnist_flax.config import default_config


def get_config() -> ml_collections.ConfigDict:
  config = default_config()
  config.name = 'best'

  # ~330k parameters, ~15M MACs/image: the most accuracy per CPU-second among the registered
  # models (An et al.'s M3/M5 need ~10x the compute per image).
  config.model = 'convbn'
  config.model_kwargs = ml_collections.ConfigDict({'features': (32, 64), 'hidden': 128,
                                                   'dropout': 0.25})

  config.optimizer = 'adamw'
  config.learning_rate = 3e-3
  config.weight_decay = 1e-2  # decoupled (AdamW): multiplied by the learning rate
  config.schedule = 'warmup_cosine'
  config.warmup_epochs = 1.0
  config.label_smoothing = 0.1
  config.ema_decay = 0.999  # ~1,000-step window (2.1 epochs at batch 128)

  # Mild affine augmentation: MNIST digits are centred and size-normalised, so strong warps
  # (or elastic distortion) mostly cost accuracy in short runs.
  config.augment.translate = 2.0
  config.augment.rotate = 10.0
  config.augment.scale = 0.1
  config.augment.shear = 5.0

  config.batch_size = 128
  config.num_epochs = 8  # the curves are flat after ~5; ~17 min per seed on 2 CPU cores
  config.validation_size = 0  # final training on all 60,000; ablations use 5,000
  return config
