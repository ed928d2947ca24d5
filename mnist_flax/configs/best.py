"""Best single-model recipe: ConvBN + augmentation + EMA + label smoothing, AdamW,
warmup + cosine over 12 epochs; final EMA weights, no validation split (final training), no
test-set selection of weights.

Run (one seed; repeat with --config.seed=1, 2 and ensemble them, see experiments/RESULTS.md):
  mnist-flax train --config best --config.seed=0 \
      --config.workdir=checkpoints/best-e12-s0
  mnist-flax ensemble --workdir checkpoints/best-e12-s0 --workdir checkpoints/best-e12-s1 \
      --workdir checkpoints/best-e12-s2
Model selection runs (ablations) add --config.validation_size=5000 and compare validation accuracy.

Reach (experiments/RESULTS.md; 2-core Xeon CPU, JAX 0.10.2, 2026-11-26): 99.66% +- 0.02 test
accuracy over 3 seeds (99.66, 99.68, 99.64), 16.9 min of training and ~18.7 min per process per
seed on the idle machine with mnist_flax/models/cpu_conv.py (before it: 99.68% +- 0.04 in 25.5 min).
The 3-seed ensemble: 99.69-99.70%; 99.69% with --tta shift_rotate (target 99.75%: not met; a GPU
sweep of 23 members, RESULTS.md, found no ensemble of 12-epoch members above 99.74%).
The 8-epoch version (--config.num_epochs=8, ~17 min) gave 99.61% +- 0.04.
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
  config.num_epochs = 12  # ~84 s each on 2 CPU cores; 30 epochs gave no more on a GPU
  config.validation_size = 0  # final training on all 60,000; ablations use 5,000
  return config
