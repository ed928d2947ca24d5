"""`mnist-flax train ...` with timers around each phase: where a whole training process goes.

    python experiments/phases.py train --config speedrun [--config.X=Y ...]

Runs the very CLI a user runs (`mnist_flax.cli.main`), with wall-clock timers wrapped around the
library functions of each phase from the outside (nothing in the package changes), and XLA's
compile durations collected through `jax.monitoring`. At exit it prints one line,
`PHASES {json}`, in seconds:

  imports      importing the library (JAX, Flax, Optax, Orbax) before anything runs
  config       loading and validating the config
  data         reading the cached MNIST arrays (or preparing them) and the validation split
  init         building and compiling the initial TrainState
  to_device    the Scorers' padded test/validation arrays placed on the devices
  epochs       the epochs' `seconds` (metrics.jsonl: what `train_seconds` sums; the train step's
               compile is in the first one)
  evaluation   the exact test (and validation) evaluations after each epoch, compile included
  checkpoint   Orbax saves (each epoch end) and the checkpointer's set-up and close
  tensorboard  the event writer (sample images at start, scalars per epoch)
  report       curves.png and report.md at the end
  compile      all XLA compilations, wherever they happened (overlaps the rows above)
  other        the rest of the time in Python (mesh, workdir lock, loop bookkeeping)

The interpreter's own start and exit are the process wall time (measured by the caller, e.g.
`experiments/benchmark.py`) minus `in_python`.
"""

from __future__ import annotations

import atexit
import functools
import json
import pathlib
import sys
import time

T_START = time.perf_counter()
PHASES: dict[str, float] = {}
REPO = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))


def _add(label: str, seconds: float) -> None:
  PHASES[label] = PHASES.get(label, 0.0) + seconds


def _timed(owner, name: str, label: str) -> None:
  """Replaces `owner.name` by the same function adding its wall time to PHASES[label]."""
  fn = getattr(owner, name)

  @functools.wraps(fn)
  def wrapper(*args, **kwargs):
    t = time.perf_counter()
    try:
      return fn(*args, **kwargs)
    finally:
      _add(label, time.perf_counter() - t)
  setattr(owner, name, wrapper)


def _instrument() -> None:
  t = time.perf_counter()
  import jax  # pylint: disable=import-outside-toplevel
  from mnist_flax import cli, config, configs, data  # noqa: F401  pylint: disable=import-outside-toplevel,unused-import  (timed as imports)
  from mnist_flax.inference import scoring
  from mnist_flax.runs import checkpoints
  from mnist_flax.reporting import report
  from mnist_flax.training import steps, writers
  _add('imports', time.perf_counter() - t)

  def on_duration(event: str, seconds: float, **_):
    if event == '/jax/core/compile/backend_compile_duration':
      _add('compile', seconds)
  jax.monitoring.register_event_duration_secs_listener(on_duration)

  _timed(configs, 'load', 'config')  # a recipe by name or a file by path
  _timed(config, 'validate_config', 'config')
  _timed(data, 'load_datasets', 'data')
  _timed(steps, 'init_train_state', 'init')
  _timed(scoring.Scorer, '__init__', 'to_device')
  _timed(scoring.Scorer, '__call__', 'evaluation')
  for name in ('__init__', 'save', 'close'):
    _timed(checkpoints.RunCheckpointer, name, 'checkpoint')
  for name in ('__init__', 'images', 'scalars', 'close'):
    _timed(writers.ScalarWriter, name, 'tensorboard')
  _timed(report, 'write_end_of_run', 'report')


def _epoch_seconds(argv: list[str]) -> float | None:
  # the last one wins, as in the CLI's overrides
  workdir = next((a.split('=', 1)[1] for a in reversed(argv)
                  if a.startswith('--config.workdir=')), None)
  if not workdir:
    return None
  path = pathlib.Path(workdir) / 'metrics.jsonl'
  if not path.is_file():
    return None
  return sum(json.loads(line)['seconds'] for line in path.read_text().splitlines() if line.strip())


def _report(argv: list[str]) -> None:
  phases = dict(PHASES)
  phases['in_python'] = time.perf_counter() - T_START
  epochs = _epoch_seconds(argv)
  phases.pop('train_and_evaluate', None)
  if epochs is not None:
    phases['epochs'] = epochs
    parts = ('data', 'init', 'to_device', 'epochs', 'evaluation', 'checkpoint', 'tensorboard',
             'report')
    # (the config validation inside train_and_evaluate is counted in `config`)
    phases['other'] = phases['in_python'] - sum(
        phases.get(p, 0.0) for p in ('imports', 'config') + parts)
  print('PHASES ' + json.dumps({k: round(v, 3) for k, v in phases.items()}), flush=True)


def main() -> int:
  argv = sys.argv[1:]
  _instrument()
  atexit.register(_report, argv)
  from mnist_flax import cli  # pylint: disable=import-outside-toplevel
  return cli.main(argv)


if __name__ == '__main__':
  sys.exit(main())
