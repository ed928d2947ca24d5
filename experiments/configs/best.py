"""Best single-model recipe (issue #5): ConvBN + augmentation + EMA + label smoothing, AdamW,
warmup + cosine; final EMA weights, no validation split (final training), no test-set selection.

Run (one seed; repeat with --config.seed=1, 2 and ensemble the three, see experiments/RESULTS.md):
  mnist-flax train --config experiments/configs/best.py --config.seed=0 \
      --config.workdir=checkpoints/best-s0
  mnist-flax ensemble --workdir checkpoints/best-s0 --workdir checkpoints/best-s1 \
      --workdir checkpoints/best-s2
Model selection runs (ablations) add --config.validation_size=5000 and compare validation accuracy.

Reach (experiments/RESULTS.md, shared 2-core CPU, 1 seed): a 4-epoch version of this recipe
(--config.num_epochs=4 --config.validation_size=5000) reached 99.55% test (EMA weights),
99.52% validation, in 25 min of training. The full 15-epoch recipe, 3 seeds and the ensemble
were NOT measured: do not read issue #5's targets (99.65% mean, 99.75% ensemble) as achieved.
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
  config.ema_decay = 0.999  # ~1,000-step window (2.3 epochs at batch 128)

  # Mild affine augmentation: MNIST digits are centred and size-normalised, so strong warps
  # (or elastic distortion) mostly cost accuracy in short runs.
  config.augment.translate = 2.0
  config.augment.rotate = 10.0
  config.augment.scale = 0.1
  config.augment.shear = 5.0

  config.batch_size = 128
  config.num_epochs = 15
  config.validation_size = 0  # final training on all 60,000; ablations use 5,000
  return config
