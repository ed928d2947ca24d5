"""Several processes (hosts): starting `jax.distributed` from the config or the environment.

A multi-host run (a TPU pod slice, several GPU machines, or several processes on one CPU for
tests) is the same `train_and_evaluate(config)` started once per process. Each process must call
`jax.distributed.initialize` before anything touches the devices; afterwards `jax.devices()` is
the global device list, the `data` mesh spans every process, and `jax.jit` runs collectively.

Where the settings come from (first found wins):

    coordinator   config.coordinator_address  or $JAX_COORDINATOR_ADDRESS   ('host:port' of process 0)
    processes     config.num_processes (> 0)   or $JAX_NUM_PROCESSES
    this process  config.process_id (>= 0)     or $JAX_PROCESS_ID

`config.distributed` picks the mode: 'auto' starts the runtime only when a coordinator or more than
one process is given (a plain run stays single-process); 'cluster' lets JAX detect a Cloud TPU pod,
SLURM or MPI environment (`jax.distributed.initialize()` with no arguments); 'off' never starts it.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from typing import Optional

import jax

from mnist_flax.errors import ConfigError

ENV_COORDINATOR = 'JAX_COORDINATOR_ADDRESS'  # the name JAX itself reads
ENV_NUM_PROCESSES = 'JAX_NUM_PROCESSES'
ENV_PROCESS_ID = 'JAX_PROCESS_ID'
MODES = ('auto', 'cluster', 'off')


@dataclasses.dataclass(frozen=True)
class Settings:
  coordinator_address: str
  num_processes: int
  process_id: int


def _env_int(name: str) -> Optional[int]:
  text = os.environ.get(name, '').strip()
  if not text:
    return None
  try:
    return int(text)
  except ValueError:
    raise ConfigError(f'${name}={text!r} is invalid: expected an integer') from None


def resolve_settings(config) -> Optional[Settings]:
  """The explicit multi-process settings of `config` + environment, or None for one process."""
  address = config.get('coordinator_address') or os.environ.get(ENV_COORDINATOR, '').strip()
  num = config.get('num_processes') or _env_int(ENV_NUM_PROCESSES) or 0
  pid = config.get('process_id', -1)
  if pid is None or pid < 0:
    pid = _env_int(ENV_PROCESS_ID)
  if not address and num <= 1:
    return None
  if not address:
    raise ConfigError(f'{num} processes but no coordinator: set config.coordinator_address '
                      f'(host:port of process 0) or ${ENV_COORDINATOR}')
  if num < 1:
    raise ConfigError(f'coordinator {address!r} given but not the number of processes: set '
                      f'config.num_processes or ${ENV_NUM_PROCESSES}')
  if pid is None or not 0 <= pid < num:
    raise ConfigError(f'process id {pid!r} is invalid: set config.process_id or ${ENV_PROCESS_ID} '
                      f'to a value in [0, {num})')
  if ':' not in address:
    raise ConfigError(f'coordinator address {address!r} is invalid: expected host:port, '
                      'e.g. 10.0.0.2:1234')
  return Settings(address, num, pid)


def _backends_started() -> bool:
  from jax._src import xla_bridge  # pylint: disable=import-outside-toplevel  (start-up time)
  return xla_bridge.backends_are_initialized()


def initialize(config) -> bool:
  """Starts the multi-process runtime when the config/environment asks for it.

  Idempotent; returns True when this process is part of a multi-process run. Must run before
  the first JAX computation (the CLI and `train_and_evaluate` call it first thing).
  """
  if jax.distributed.is_initialized():
    return jax.process_count() > 1
  mode = config.get('distributed', 'auto')
  if mode == 'off':
    return False
  settings = None if mode == 'cluster' else resolve_settings(config)
  if mode == 'auto' and settings is None:
    return False
  if _backends_started():
    raise ConfigError('a multi-process run must start jax.distributed before the first JAX '
                      'computation; call train_and_evaluate (or mnist-flax train) in a fresh process')
  if settings is None:  # 'cluster': JAX detects a TPU pod, SLURM, MPI, ... itself
    jax.distributed.initialize()
  else:
    jax.distributed.initialize(settings.coordinator_address, settings.num_processes,
                               settings.process_id)
  logging.info('jax.distributed: process %d of %d, %d local / %d global devices',
               jax.process_index(), jax.process_count(), jax.local_device_count(),
               jax.device_count())
  return jax.process_count() > 1


def barrier(name: str) -> None:
  """Waits until every process reaches `name` (a no-op with one process)."""
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils  # pylint: disable=import-outside-toplevel  (start-up time)
    multihost_utils.sync_global_devices(name)
