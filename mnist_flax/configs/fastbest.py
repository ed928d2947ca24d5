"""Toward `best`'s accuracy in well under its time: a wide blockcnn, augmentation, EMA.

Run:   mnist-flax train --config fastbest --config.seed=S
Bench: python experiments/benchmark.py --config fastbest --seeds 3 \
           --target 0.9965 --no-throughput
Reach: 99.63% +- 0.02 test accuracy over seeds 0-2 (99.66, 99.60, 99.62; final EMA weights) in
       6.3 min of training per seed (365-384 s), 2-core AMD EPYC, quiet, 2026-12-01: the 10-minute
       budget met, `best`'s 99.65% missed by 0.02 (experiments/RESULTS.md, "fastbest").

Why: the speedrun network at twice the width ((64, 128): 122k parameters, ~4x the arithmetic)
with fast995's augmentation and EMA; 40 epochs fit well inside 10 minutes at ~6,500 training
images/s. One validation run (seed 0, 5,000 held out) reached 99.62%, flat from epoch 25 on.
"""

from mnist_flax.configs import fast995


def get_config():
  # fast995's recipe (augmentation, EMA, schedule, label smoothing), defined there once.
  config = fast995.get_config()
  config.name = 'fastbest'
  config.model_kwargs.features = (64, 128)
  config.learning_rate = 5e-3
  config.num_epochs = 40
  return config
