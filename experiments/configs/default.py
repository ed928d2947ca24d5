"""Default config: the reference CNN trained to >= 99.3% on a 2-core CPU.

Run:   mnist-flax train --config experiments/configs/default.py
Reach: see README results table (measured on the 2-core CPU machine).
"""

import ml_collections


def get_config() -> ml_collections.ConfigDict:
  """Returns the default configuration; every other config starts from it."""
  config = ml_collections.ConfigDict()
  config.name = 'default'

  # Model: a name from mnist_flax.models.MODELS, with keyword arguments for it.
  config.model = 'cnn'
  config.model_kwargs = ml_collections.ConfigDict()
  config.dtype = 'float32'  # compute dtype; parameters stay float32

  # Optimizer and schedule (names from mnist_flax.train.OPTIMIZERS / SCHEDULES).
  config.optimizer = 'adam'
  config.learning_rate = 3e-3
  config.momentum = 0.9
  config.weight_decay = 0.0
  config.schedule = 'warmup_cosine'
  config.warmup_epochs = 0.3
  config.label_smoothing = 0.0

  config.batch_size = 128
  config.eval_batch_size = 1000
  config.num_epochs = 3
  config.seed = 0

  # Data. data_source: 'auto' (local IDX files if idx_dir or $MNIST_IDX_DIR is set, else
  # TFDS 'mnist'), 'tfds' or 'idx'.
  config.data_source = 'auto'
  config.idx_dir = ''
  config.tfds_data_dir = ''  # '' -> TFDS default (~/tensorflow_datasets)
  config.validation_size = 0  # images held out of the 60,000 for model selection
  config.train_limit = 0  # > 0: train on the first N images only (smoke tests)

  # Run directory: '' -> checkpoints/<name>.
  config.workdir = ''
  config.keep_checkpoints = 2
  config.checkpoint_every_steps = 0  # 0: only at the end of each epoch
  config.checkpoint_every_seconds = 0.0

  # On CPU: split the host into N XLA devices with the batch sharded over them (-1: one per
  # core; 0: leave JAX's default of one device). Ignored by GPU/TPU backends.
  config.cpu_devices = -1
  config.sync_every_steps = 8  # wait for the device every N steps (bounded queue); 0 = never
  config.progress_bar = True
  return config
