"""Speedrun: the fastest recipe found to 99.0% test accuracy on a 2-core CPU (issue #4).

Run:   mnist-flax train --config experiments/configs/speedrun.py
       warm start (compiled programs reused from disk on the second run):
       JAX_COMPILATION_CACHE_DIR=/tmp/jax_cache JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS=0 \
         mnist-flax train --config experiments/configs/speedrun.py
Bench: python experiments/benchmark.py --config experiments/configs/speedrun.py --seeds 5
Reach: 99.18% mean test accuracy over seeds 0-4 (std 0.08; 99.20, 99.13, 99.11, 99.33, 99.11), 2
       epochs; every seed passes 99.0% at epoch 2. Idle machine, 02:44 UTC (benchmark above, cold
       compilation cache): training 11.8 s per seed (11.7-11.9), whole process 16.1 s, same
       accuracies. Earlier, at 02:05 UTC on the
       shared 2-core Xeon (AVX-512, 2.3 GHz), JAX 0.10.2, with other jobs running: training
       22.7-56.7 s (mean 47.8), process 28.3-78.8 s; the least contended seed trained in 22.7 s
       within a 28.3 s process. Each process used 28-32 CPU seconds, and the train step runs
       ~6,000 images per core-second, so an idle machine should train in about 12-15 s (estimate).
       Cold vs warm compilation cache and the other recipes tried: experiments/SPEED.md.

Why each choice (measurements in experiments/SPEED.md):
* `fastcnn` at half width (16, 32): the input folded 2x2 into channels so every conv runs at
  14x14 or 7x7 (XLA's CPU convolutions at 28x28 with few channels are memory-bound), batch norm
  for a fast, stable start; 4.8 MFLOPs per training image vs 27.9 for the reference CNN, and
  about 3x the reference's images per core-second.
* Adam at 1e-2 with a short warmup and a cosine decay to zero inside the run, label smoothing
  0.1: the best accuracy per epoch of the variants tried (5e-3: 99.03% mean over 5 seeds).
* Batch 128 over 2 CPU devices (one per core): larger batches were slower per image here.
"""

from mnist_flax import config as config_lib


def get_config():
  config = config_lib.default_config()
  config.name = 'speedrun'
  config.model = 'fastcnn'
  config.model_kwargs.features = (16, 32)
  config.learning_rate = 1e-2
  config.schedule = 'warmup_cosine'
  config.warmup_epochs = 0.2
  config.label_smoothing = 0.1
  config.batch_size = 128
  config.num_epochs = 2
  config.validation_size = 0  # final training on all 60,000
  return config
