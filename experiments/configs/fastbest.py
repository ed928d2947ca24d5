"""Toward `best`'s accuracy in well under its time (issue #16): a wide blockcnn, augmentation, EMA.

Run:   mnist-flax train --config experiments/configs/fastbest.py --config.seed=S
Bench: python experiments/benchmark.py --config experiments/configs/fastbest.py --seeds 3 \
           --target 0.9965 --no-throughput
Reach: 99.63% +- 0.02 test accuracy over seeds 0-2 (99.66, 99.60, 99.62; final EMA weights) in
       6.3 min of training per seed (365-384 s), 2-core AMD EPYC, quiet, 2026-12-01: the 10-minute
       budget met, `best`'s 99.65% missed by 0.02 (experiments/RESULTS.md, "fastbest").

Why: the speedrun network at twice the width ((64, 128): 122k parameters, ~4x the arithmetic)
with fast995's augmentation and EMA; 40 epochs fit well inside 10 minutes at ~6,500 training
images/s. One validation run (seed 0, 5,000 held out) reached 99.62%, flat from epoch 25 on.
"""

import pathlib

from mnist_flax.config import load_config_file


def get_config():
  # fast995.py's recipe (augmentation, EMA, schedule, label smoothing), defined there once.
  config = load_config_file(pathlib.Path(__file__).with_name('fast995.py'), validate=False)
  config.name = 'fastbest'
  config.model_kwargs.features = (64, 128)
  config.learning_rate = 5e-3
  config.num_epochs = 40
  return config
