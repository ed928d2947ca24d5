"""Benchmark of `mnist-flax predict`: whole-process wall time and batch throughput (issue #3).

    flock /tmp/mnist_cpu.lock python experiments/bench_predict.py [--workdir DIR] [--runs 5]

Reports, for the shipped pretrained model (or --workdir):

* the wall time of the whole `mnist-flax predict FILE` process (Python start, imports, restore,
  preprocessing, compile, predict, print), min and median over --runs fresh processes, plus the
  same with --json to show output formatting does not matter;
* batch prediction throughput over the 10,000 MNIST test images through `predict.predict`
  (what evaluation and the CLI run), for several batch sizes, best of --repeats after a warm-up,
  and the test accuracy of that path;
* preprocessing cost per image for MNIST-like 28x28 inputs and for photo-like ones.

Targets on the 2-core CPU machine: process < 3 s, batch >= 20,000 images/s. Timings on a shared
machine are noisy: run it under `flock /tmp/mnist_cpu.lock` and report the load average printed.
Needs $MNIST_IDX_DIR (the test IDX files); never imports TensorFlow.
"""

from __future__ import annotations

import argparse
import os
import pathlib
import statistics
import subprocess
import sys
import time

import numpy as np

REPO = pathlib.Path(__file__).resolve().parent.parent
SAMPLE = REPO / 'experiments' / 'samples' / '2_phone_photo.jpg'


def process_wall_times(workdir: str | None, runs: int, sample: pathlib.Path) -> list[float]:
  """Seconds for whole `mnist-flax predict` processes, each from a cold Python start."""
  cli = [sys.executable, '-m', 'mnist_flax.cli', 'predict', str(sample)]
  if workdir:
    cli += ['--workdir', workdir]
  env = dict(os.environ)
  env.pop('JAX_NUM_CPU_DEVICES', None)  # what a user's shell has: JAX's default single device
  times = []
  for _ in range(runs):
    start = time.perf_counter()
    result = subprocess.run(cli, capture_output=True, text=True, env=env, cwd=REPO)
    times.append(time.perf_counter() - start)
    if result.returncode != 0:
      raise SystemExit(f'predict failed: {result.stderr.strip()}')
  print(f'  output: {result.stdout.strip()}')
  return times


def batch_throughput(classifier, images: np.ndarray, batch_size: int, repeats: int) -> float:
  """Best images/s of `predict.predict` over all images in batches of `batch_size`."""
  import jax  # pylint: disable=import-outside-toplevel
  from mnist_flax.inference import predict  # pylint: disable=import-outside-toplevel
  device = jax.local_devices()[0]
  n = len(images) - len(images) % batch_size
  batches = [jax.device_put(images[i:i + batch_size], device) for i in range(0, n, batch_size)]
  run = lambda b: predict.predict(classifier.model, classifier.variables, b)  # noqa: E731
  jax.block_until_ready(run(batches[0]))  # compile
  best = float('inf')
  for _ in range(repeats):
    start = time.perf_counter()
    outs = [run(b) for b in batches]
    jax.block_until_ready(outs)
    best = min(best, time.perf_counter() - start)
  return n / best


def preprocessing_ms(images: np.ndarray, count: int) -> tuple[float, float]:
  from mnist_flax.inference import preprocess  # pylint: disable=import-outside-toplevel
  start = time.perf_counter()
  for x in images[:count]:
    preprocess.preprocess(x)
  mnist_like = (time.perf_counter() - start) / count * 1e3
  rng = np.random.default_rng(0)
  photos = [preprocess.render_photo_like(x, rng) for x in images[:count // 4]]
  start = time.perf_counter()
  for photo in photos:
    preprocess.preprocess(photo)
  return mnist_like, (time.perf_counter() - start) / len(photos) * 1e3


def main():
  parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  parser.add_argument('--workdir', help='run directory or exported model (default: pretrained)')
  parser.add_argument('--runs', type=int, default=5, help='fresh `predict` processes to time')
  parser.add_argument('--repeats', type=int, default=5, help='timed passes over the test set')
  parser.add_argument('--batch-sizes', default='256,1000,2500,10000')
  args = parser.parse_args()
  print(f'load average before: {os.getloadavg()[0]:.2f} (cores: {os.cpu_count()})')

  print(f'whole process: mnist-flax predict {SAMPLE.name}')
  times = process_wall_times(args.workdir, args.runs, SAMPLE)
  print(f'  wall: min {min(times):.2f} s, median {statistics.median(times):.2f} s over {len(times)} '
        f'runs (target < 3 s)')

  from mnist_flax.inference import export, predict  # pylint: disable=import-outside-toplevel
  import jax  # pylint: disable=import-outside-toplevel
  images, labels = export.mnist_test_set()
  classifier = predict.load_classifier(args.workdir)
  accuracy = float((classifier.probabilities(images).argmax(1) == labels).mean())
  print(f'batch prediction over the 10,000 test images ({jax.local_devices()[0].device_kind}, '
        f'{jax.local_device_count()} device(s)); accuracy {accuracy:.4f}')
  for batch_size in (int(b) for b in args.batch_sizes.split(',')):
    rate = batch_throughput(classifier, images, batch_size, args.repeats)
    print(f'  batch {batch_size:6d}: {rate:9.0f} images/s (target >= 20,000)')

  mnist_like, photo = preprocessing_ms(images, 400)
  print(f'preprocessing: {mnist_like:.2f} ms/image for 28x28 MNIST images, {photo:.2f} ms/image '
        'for photo-like ones (~300-600 px JPEG-decoded)')
  print(f'load average after: {os.getloadavg()[0]:.2f}')


if __name__ == '__main__':
  main()
