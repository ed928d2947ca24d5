"""An et al. (2020) M3/M5/M7 with the `best` recipe (issue #5): an accelerator-sized model family.

Run (M5; --config.model=m3 or m7 for the others):
  mnist-flax train --config experiments/configs/an_cnn.py --config.seed=0
Each image costs ~10x the MACs of `best`'s ConvBN, so on the 2-core CPU these do not fit the
30-minute budget; on a GPU a 12-epoch run takes about a minute. The recipe (optimizer, schedule,
label smoothing, EMA, mild affine augmentation) is `best`'s, not An et al.'s 150-epoch one; the
held-out validation split (5,000 images) stays on, for choosing ensembles (experiments/RESULTS.md).
"""

import ml_collections

from mnist_flax.configs import best


def get_config() -> ml_collections.ConfigDict:
  config = best.get_config()
  config.name = 'an_cnn'
  config.model = 'm5'
  config.model_kwargs = ml_collections.ConfigDict({})  # M3/M5/M7 keep An et al.'s widths
  config.validation_size = 5000
  return config
