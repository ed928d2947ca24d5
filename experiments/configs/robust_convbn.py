"""`best.py` (ConvBN, EMA, AdamW) with the stronger warps of `robust.py`, 8 epochs: the larger
candidate for a model that holds on handwriting from outside MNIST (issue #15).

Run:   nice -n 5 mnist-flax train --config experiments/configs/robust_convbn.py
"""

import ml_collections

from mnist_flax.config import default_config


def get_config() -> ml_collections.ConfigDict:
  config = default_config()
  config.name = 'robust_convbn_run'
  config.model = 'convbn'  # as best.py
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
  config.augment.translate = 2.5  # robust.py's warps
  config.augment.rotate = 15.0
  config.augment.scale = 0.2
  config.augment.shear = 12.0
  config.augment.elastic_alpha = 10.0
  config.augment.elastic_sigma = 4.0
  return config
