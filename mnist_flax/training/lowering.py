"""The XLA CPU lowering of a process: chosen per machine by measurement, cached, or forced.

XLA's CPU backend has several ways to run the same program (YNNPACK for convolutions and dots,
Eigen, oneDNN), and which is fastest depends on the CPU: on an Intel Xeon with AMX, taking the
convolutions away from YNNPACK made the reference CNN's step 1.53x faster, while an AMD EPYC
(Zen 4) measured other differences (experiments/SPEED.md). So no choice is hard-coded: on first
use, `cached_or_measured` times a few train steps of the config's network under every candidate,
each in its own process (the options are fixed when a process's backend starts), in interleaved
rounds; the fastest wins only if its median speed-up over `default` (XLA's own settings) exceeds
`MARGIN`, so the choice is not slower than the default beyond the measurement's noise. The choice is cached per CPU
(model string, family, ISA flags, cores), jaxlib version, device count and workload in
$XDG_CACHE_HOME/mnist_flax/lowering.json (~/.cache/...); $MNIST_FLAX_CACHE='' disables caching,
and then 'auto' means 'default' rather than measuring in every process.

The setting: `config.cpu_lowering`, or $MNIST_FLAX_CPU_LOWERING, which wins (tests set it to
'default'): 'auto' (measure once, then the cache), 'default' (leave XLA alone) or a candidate's
name. GPU/TPU processes skip all of it; a user's own XLA_FLAGS naming one of these options win.
The flags go into $XLA_FLAGS, which JAX's persistent compilation cache hashes into its key.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import importlib.metadata
import json
import logging
import os
import pathlib
import select
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Callable, Optional

import jax
import jaxlib.version
import numpy as np

from mnist_flax import config as config_lib, configs, files, models
from mnist_flax.data.spec import MNIST, spec_of
from mnist_flax.errors import ConfigError
from mnist_flax.training import sharding, steps

ENV = 'MNIST_FLAX_CPU_LOWERING'
MARGIN = 1.05  # another candidate must be this much faster than default to be chosen


@dataclasses.dataclass(frozen=True)
class Candidate:
  name: str
  flags: tuple[str, ...]
  needs: frozenset = frozenset()  # /proc/cpuinfo flags the candidate only makes sense with
  about: str = ''


CANDIDATES = {c.name: c for c in (
    Candidate('default', (), about="XLA's own choice (YNNPACK for convolutions and dots)"),
    Candidate('ynn-no-conv', ('--xla_cpu_experimental_ynn_fusion_type=-individual_convolution',),
              about="convolutions by XLA's Eigen kernels, the rest as default"),
    Candidate('ynn-off', ('--xla_cpu_experimental_ynn_fusion_type=',),
              about='no YNNPACK at all (Eigen convolutions and dots)'),
    Candidate('onednn', ('--xla_cpu_use_onednn=true',), needs=frozenset({'avx512f'}),
              about='oneDNN for the dots and convolutions it supports (x86 with AVX-512)'),
)}
SETTINGS = config_lib.CPU_LOWERINGS  # 'auto' and the candidates' names
# Option names the candidates set: when XLA_FLAGS already names one, the user's setting wins.
OWN_OPTIONS = ('xla_cpu_experimental_ynn_fusion_type', 'xla_cpu_use_onednn', 'xla_cpu_use_xnnpack',
               'xla_cpu_experimental_onednn_fusion_type', 'xla_cpu_experimental_xnn_fusion_type')


# ---------------------------------------------------------------------------- the setting


def setting_of(config) -> str:
  """'auto', 'default' or a candidate's name: $MNIST_FLAX_CPU_LOWERING, else the config's."""
  env = os.environ.get(ENV)
  value, where = (env, f'${ENV}') if env else (config.get('cpu_lowering', 'default'),
                                               'config.cpu_lowering')
  if value not in SETTINGS:
    raise ConfigError(f'{where}={value!r} is not a CPU lowering; valid: {", ".join(SETTINGS)}')
  return value


def setup(config, devices: int, measure: bool = True) -> Optional[str]:
  """Applies the CPU lowering that `config` asks for; must run before JAX's backend starts.

  `devices`: the CPU devices the process will have (the probe runs with the same split).
  `measure=False` (several processes of one run, which would time each other): 'auto' takes
  the cached choice, else 'default'. Returns the candidate applied, or None where none is: an
  accelerator backend, XLA_FLAGS already naming one of these options, or a backend already
  started (with a warning when that loses a non-default choice).
  """
  setting = setting_of(config)
  if setting == 'default':
    return 'default'
  if not _cpu_backend_expected():
    return None
  if any(option in os.environ.get('XLA_FLAGS', '') for option in OWN_OPTIONS):
    logging.info('cpu_lowering=%s ignored: XLA_FLAGS sets the option itself', setting)
    return None
  if setting == 'auto':
    setting = cached_or_measured(devices, workload_of(config), measure=None if measure else False)
  return apply(setting)


def workload_of(config) -> dict:
  """What the probe trains: the config's network, batch size and compute dtype (a lowering that
  suits one network can slow another: experiments/SPEED.md), on its data set's image shape and
  classes (named only when not MNIST's, so MNIST's cached choices keep their keys)."""
  workload = {'model': config.model, 'model_kwargs': dict(config.get('model_kwargs') or {}),
              'batch_size': config.batch_size, 'dtype': config.get('dtype', 'float32')}
  if config.get('dataset', MNIST.name) != MNIST.name:
    workload['dataset'] = config.dataset
  if config.get('imports'):  # a network of the user's: the probe imports what registers it
    workload['imports'] = list(config.imports)
  return workload


def apply(name: str) -> Optional[str]:
  """Appends candidate `name`'s flags to $XLA_FLAGS (JAX reads them when its backend starts)."""
  from jax._src import xla_bridge  # pylint: disable=import-outside-toplevel  (start-up time)
  if xla_bridge.backends_are_initialized():
    if name != 'default':
      logging.warning('cpu_lowering %r not applied: JAX already started (choose it before the '
                      'first JAX computation, or use the CLI)', name)
    return None
  flags = CANDIDATES[name].flags
  if flags:
    os.environ['XLA_FLAGS'] = ' '.join([os.environ.get('XLA_FLAGS', ''), *flags]).strip()
  logging.info('CPU lowering: %s %s', name, ' '.join(flags))
  return name


def _cpu_backend_expected() -> bool:
  """Whether JAX will run on the CPU: no accelerator platform asked for or installed."""
  platforms = jax.config.jax_platforms or os.environ.get('JAX_PLATFORM_NAME') or ''
  if platforms:
    return platforms.split(',')[0].strip() == 'cpu'
  plugins = ('jax-cuda', 'jax_cuda', 'jax-rocm', 'jax_rocm', 'libtpu')
  return not any((dist.metadata['Name'] or '').lower().startswith(plugins)
                 for dist in importlib.metadata.distributions())


# ---------------------------------------------------------------------------- the choice


def speedups(rounds: dict[str, list[float]]) -> dict[str, float]:
  """Each candidate's speed-up over 'default': the median over rounds of default's seconds per
  step divided by the candidate's in the same round (pairs taken close in time, so load from
  other processes cancels out). A candidate without every round (it failed) is left out."""
  base = rounds.get('default')
  if not base:
    return {}
  return {name: statistics.median(d / t for d, t in zip(base, times))
          for name, times in rounds.items() if len(times) == len(base)}


def choose(rounds: dict[str, list[float]], margin: float = MARGIN) -> str:
  """The candidate with the largest speed-up over 'default' if that exceeds `margin`, else
  'default' (also when 'default' itself could not be measured: nothing to compare with)."""
  ups = speedups(rounds)
  best = max(ups, key=ups.get, default='default')
  return best if ups.get(best, 0.0) > margin else 'default'


def available(cpu_flags: frozenset) -> list[str]:
  """The candidates this CPU can run (those without `needs`, or whose needs it has)."""
  return [c.name for c in CANDIDATES.values() if c.needs <= cpu_flags]


def cpu_signature() -> dict:
  """What identifies this machine's CPU for the cache: /proc/cpuinfo's model name, family,
  model and stepping (a 'model name' alone can be as vague as 'AMD EPYC'), the ISA flags
  that decide the kernels, and the core count."""
  fields, flags = {}, frozenset()
  try:
    text = pathlib.Path('/proc/cpuinfo').read_text()
  except OSError:
    text = ''
  for line in text.splitlines():
    key, _, value = line.partition(':')
    key = key.strip()
    if key in ('model name', 'cpu family', 'model', 'stepping', 'vendor_id') and key not in fields:
      fields[key] = value.strip()
    elif key == 'flags' and not flags:
      flags = frozenset(value.split())
  isa = sorted(flags & {'avx2', 'avx512f', 'avx512_bf16', 'avx512_vnni', 'amx_bf16', 'amx_tile',
                        'avx_vnni'})
  return {**fields, 'isa': isa, 'cores': os.cpu_count(), 'flags': flags}


def cache_key(cpu: dict, devices: int, workload: dict) -> str:
  described = {k: v for k, v in cpu.items() if k != 'flags'}
  return hashlib.sha256(json.dumps([described, jaxlib.version.__version__, devices, workload],
                                   sort_keys=True).encode()).hexdigest()[:16]


def cache_path() -> Optional[pathlib.Path]:
  """$XDG_CACHE_HOME/mnist_flax/lowering.json (~/.cache/...); None when $MNIST_FLAX_CACHE=''."""
  if os.environ.get('MNIST_FLAX_CACHE') == '':
    return None
  base = os.environ.get('XDG_CACHE_HOME') or pathlib.Path.home() / '.cache'
  return pathlib.Path(base) / 'mnist_flax' / 'lowering.json'


def cached_or_measured(devices: int, workload: dict, path: Optional[pathlib.Path] = None,
                       measure: Optional[Callable[[list[str], int, dict], dict]] = None,
                       refresh: bool = False) -> str:
  """The cached choice for this CPU, jaxlib, device count and workload (`refresh`: ignore it);
  else measures with `measure` (default `measure_candidates`; False: never, so 'default'),
  caches and returns the choice. Without a cache file: 'default' (no measurement in every run)."""
  path = path or cache_path()
  if path is None:
    logging.info("cpu_lowering='auto' without a cache ($MNIST_FLAX_CACHE=''): using 'default'")
    return 'default'
  cpu = cpu_signature()
  key = cache_key(cpu, devices, workload)
  cached = _read(path).get(key, {}).get('choice')
  if cached in CANDIDATES and not refresh:
    return cached
  if measure is False:
    return 'default'
  logging.warning('timing the XLA CPU lowerings for this machine (once; cached in %s)', path)
  try:
    rounds = (measure or measure_candidates)(available(cpu['flags']), devices, workload)
  except (OSError, ValueError, subprocess.SubprocessError) as e:  # a speed-up, never a failure
    logging.warning("could not time the CPU lowerings (%s): using 'default'", e)
    return 'default'
  choice, ups = choose(rounds), speedups(rounds)
  table = _read(path)  # another process may have written meanwhile
  table[key] = {'choice': choice, 'speedup_over_default': ups,
                'ms_per_step_median': {k: 1000 * statistics.median(v) for k, v in rounds.items()},
                'cpu': cpu.get('model name'), 'devices': devices, 'workload': workload,
                'load_average_1m': os.getloadavg()[0],
                'measured': time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())}
  try:
    path.parent.mkdir(parents=True, exist_ok=True)
    with files.atomic_path(path) as tmp:
      tmp.write_text(json.dumps(table, indent=1) + '\n')
  except OSError as e:
    logging.warning('could not cache the CPU lowering in %s: %s', path, e)
  logging.warning('CPU lowering %r chosen (speed-up over default: %s)', choice,
                  ', '.join(f'{k} {v:.2f}x' for k, v in ups.items()))
  return choice


def _read(path: pathlib.Path) -> dict:
  try:
    table = json.loads(path.read_text())
    return table if isinstance(table, dict) else {}
  except (OSError, ValueError):
    return {}


# ---------------------------------------------------------------------------- the measurement


def measure_candidates(names: list[str], devices: int, workload: dict, rounds: int = 5,
                       seconds: float = 0.2, timeout: float = 120.0) -> dict[str, list[float]]:
  """Seconds per train step of `workload` under each candidate, one figure per round.

  One child process per candidate (its flags in its XLA_FLAGS), all started together so their
  imports and compilations overlap; then `rounds` rounds in which each child in turn runs steps
  for `seconds` (at least 2) while the others wait, so load from other processes hits every
  candidate alike. A child that fails (an option this jaxlib lacks) is left out.
  """
  children = {}
  base = os.environ.get('XLA_FLAGS', '')
  for name in names:
    env = dict(os.environ, XLA_FLAGS=' '.join([base, *CANDIDATES[name].flags]).strip(),
               JAX_PLATFORMS='cpu', JAX_NUM_CPU_DEVICES=str(devices), **{ENV: 'default'})
    children[name] = subprocess.Popen(
        [sys.executable, '-m', 'mnist_flax.training.lowering', '--probe', json.dumps(workload)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
        env=env)
  times = {}
  try:
    ready = {name: child for name, child in children.items()
             if _reply(child, timeout) == 'ready'}
    for _ in range(rounds):
      for name, child in ready.items():
        child.stdin.write(f'{seconds}\n')
        child.stdin.flush()
        count, elapsed = (_reply(child, timeout) or '0 0').split()[:2]
        if int(count):
          times.setdefault(name, []).append(float(elapsed) / int(count))
  except BrokenPipeError:
    pass  # a child died: it has fewer rounds, so `speedups` leaves it out
  finally:
    for child in children.values():
      child.kill()
      child.wait()
  return times


def _reply(child: subprocess.Popen, timeout: float) -> Optional[str]:
  """The child's next line, or None if it died or said nothing within `timeout` seconds."""
  if not select.select([child.stdout], [], [], timeout)[0]:
    return None
  line = child.stdout.readline()
  return line.strip() or None


def _probe(workload: dict) -> None:
  """A child of `measure_candidates`: compiles the workload's train step, says 'ready', then
  for each number S read from stdin runs steps for S seconds (at least 2) and writes how many
  and the seconds they took."""
  if jax.default_backend() != 'cpu':
    return  # nothing to choose: the parent sees no reply
  config = config_lib.default_config()
  config.update(dict(workload, imports=tuple(workload.get('imports', ()))))
  config_lib.import_user_modules(config)
  mesh = sharding.make_mesh()
  spec = spec_of(config)
  n = 16 * config.batch_size
  rng = np.random.default_rng(0)
  data = sharding.put_replicated((rng.integers(0, 256, (n,) + spec.image_shape, dtype=np.uint8),
                                  rng.integers(0, spec.num_classes, (n,), dtype=np.int32),
                                  np.arange(n, dtype=np.int32)), mesh)
  model = models.get_model(config, spec.num_classes)
  state = steps.init_train_state(config, model, jax.random.PRNGKey(0), 16, mesh,
                                 image_shape=spec.image_shape)
  totals = jax.device_put(steps.zero_train_totals(), sharding.replicated(mesh))
  step = steps.make_train_step(config, model, mesh)
  i = 0
  for _ in range(3):  # compile and warm up
    state, totals = step(state, totals, *data, i % 16)
  jax.block_until_ready(totals)
  print('ready', flush=True)
  for line in sys.stdin:
    t, count = time.perf_counter(), 0
    while count < 2 or time.perf_counter() - t < float(line):
      state, totals = step(state, totals, *data, i % 16)
      jax.block_until_ready(totals)
      i, count = i + 1, count + 1
    print(f'{count} {time.perf_counter() - t:.6f}', flush=True)


def main(argv: list[str]) -> None:
  """`python -m mnist_flax.training.lowering [--config speedrun]`: measures every candidate for
  a config's network on this machine now, prints the table and caches the choice (replacing a
  cached one: a choice made while other processes loaded the machine can be redone)."""
  if argv[:1] == ['--probe']:
    _probe(json.loads(argv[1]))
    return
  parser = argparse.ArgumentParser(description=main.__doc__.split('\n\n')[0])
  parser.add_argument('--config', default='default', help='a recipe name or a config file')
  args = parser.parse_args(argv)
  config = configs.load(args.config)
  devices = sharding.planned_cpu_devices(config.get('cpu_devices', 0), config.batch_size)
  workload, found = workload_of(config), {}
  def measure(names, devices, workload):
    found.update(measure_candidates(names, devices, workload))
    return found
  path = cache_path() or pathlib.Path(tempfile.mkdtemp()) / 'lowering.json'
  choice = cached_or_measured(devices, workload, path, measure, refresh=True)
  ups = speedups(found)
  print(f'{cpu_signature().get("model name")}, {devices} CPU device(s), {config.model} batch '
        f'{config.batch_size}, load average {os.getloadavg()[0]:.1f}')
  for name, times in found.items():
    print(f'  {name:<12} {1000 * statistics.median(times):8.2f} ms/step (median of '
          f'{len(times)})  {ups.get(name, float("nan")):.2f}x default  '
          f'{" ".join(CANDIDATES[name].flags)}')
  print(f'chosen: {choice} (cached in {path})')


if __name__ == '__main__':
  main(sys.argv[1:])
