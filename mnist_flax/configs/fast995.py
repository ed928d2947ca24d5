"""99.5% in a minute and a half of a 2-core CPU: blockcnn + augmentation + EMA.

Run:   mnist-flax train --config fast995 --config.seed=S
Bench: python experiments/benchmark.py --config fast995 --seeds 3 \
           --target 0.995 --no-throughput
Reach: 99.54% +- 0.03 test accuracy over seeds 0-2 (99.52, 99.58, 99.51; final EMA weights) in
       83.5 s of training per seed (82.3-85.7; 92-96 s whole process, cold compilation cache),
       2-core AMD EPYC, quiet machine, `bash experiments/bench_issue16.sh` (experiments/RESULTS.md,
       "fast995"); targets >= 99.5% mean in <= 90 s: met.

Why each choice (chosen on the 5,000-image validation split, experiments/RESULTS.md):
* `blockcnn` (the speedrun network, 43k parameters, ~3x the images/s of `fastcnn` 32/64): at
  16 epochs it reached 99.50% validation; at twice the width, (64, 128), 8 epochs reached
  99.52% for about twice the time, so the narrow net trained longer is the better buy.
* best.py's mild augmentation (2 px, 10 degrees, 10% scale, 5 degrees shear) and an EMA of the
  weights (0.999): what keeps a small net improving past ~99.3% instead of memorising.
* Adam 1e-2 with the default betas, 1 epoch of warmup then cosine to zero, label smoothing 0.1,
  20 epochs: the best validation mean of 2 seeds (99.56%) among 16 epochs at 5e-3 (99.55%, the
  first version), 22 epochs (99.47%), 1e-2 at 16 epochs (99.51%), features (32, 96) (99.54%) and
  no crop (99.55%), all within the 90 s.
"""

from mnist_flax import config as config_lib


def get_config():
  config = config_lib.default_config()
  config.name = 'fast995'
  config.model = 'blockcnn'
  config.learning_rate = 1e-2
  config.schedule = 'warmup_cosine'
  config.warmup_epochs = 1.0
  config.label_smoothing = 0.1
  config.ema_decay = 0.999
  config.augment.translate = 2.0
  config.augment.rotate = 10.0
  config.augment.scale = 0.1
  config.augment.shear = 5.0
  config.batch_size = 128
  config.num_epochs = 20
  config.validation_size = 0  # final training on all 60,000
  config.end_of_run_report = False
  return config
