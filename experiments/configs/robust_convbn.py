"""The `best` recipe (ConvBN, EMA, AdamW) with the stronger warps of the `robust` recipe, 8
epochs: the larger candidate for a model that holds on handwriting from outside MNIST (issue #15).

Run:   nice -n 5 mnist-flax train --config experiments/configs/robust_convbn.py
"""

import ml_collections

from mnist_flax.config import default_config
from mnist_flax.configs import robust


def get_config() -> ml_collections.ConfigDict:
  config = default_config()
  config.name = 'robust_convbn_run'
  config.model = 'convbn'  # as best
  config.model_kwargs = ml_collections.ConfigDict({'features': (32, 64), 'hidden': 128,
                                                   'dropout': 0.25})
  config.optimizer = 'adamw'
  config.learning_rate = 3e-3
  config.weight_decay = 1e-2
  config.schedule = 'warmup_cosine'
  config.warmup_epochs = 1.0
  config.label_smoothing = 0.1
  config.ema_decay = 0.999
  config.batch_size = 128
  config.num_epochs = 8
  config.validation_size = 0
  # The robust recipe's warps, defined there once.
  config.augment = robust.get_config().augment
  return config
