"""Runs `mnist-flax train ARGS` in this process and injects one fault at a chosen step.

    python tests/fault_driver.py MODE STEP -- TRAIN_ARGS...

MODE: 'none'; 'kill' (SIGKILL right after step STEP is dispatched); 'term' (SIGTERM then, the
way a spot machine is reclaimed); 'kill_in_save' (SIGKILL while the checkpoint of step STEP is
being written: its files are on disk, the atomic rename has not happened). The signal is real
and delivered by the kernel: nothing in the library knows about this script. Used by
tests/runs/test_resume.py and tests/runs/test_faults.py.
"""

import os
import signal
import sys

# Before JAX starts, like the CLI would.
os.environ.setdefault('JAX_NUM_CPU_DEVICES', '2')


def _at_step(step: int, signum: int) -> None:
  from mnist_flax.runs import preemption  # pylint: disable=import-outside-toplevel
  original = preemption.SavePolicy.should_save

  def should_save(self, current):
    if current == step:
      os.kill(os.getpid(), signum)
    return original(self, current)
  preemption.SavePolicy.should_save = should_save


def _in_save(step: int) -> None:
  from orbax.checkpoint._src.path import atomicity  # pylint: disable=import-outside-toplevel
  original = atomicity.AtomicRenameTemporaryPath.finalize

  async def finalize(self, *args, **kwargs):
    if self._final_path.name == str(step):  # pylint: disable=protected-access
      os.kill(os.getpid(), signal.SIGKILL)
    return await original(self, *args, **kwargs)
  atomicity.AtomicRenameTemporaryPath.finalize = finalize


def main(argv):
  mode, step, sep, *args = argv
  assert sep == '--', argv
  step = int(step)
  if mode == 'kill':
    _at_step(step, signal.SIGKILL)
  elif mode == 'term':
    _at_step(step, signal.SIGTERM)
  elif mode == 'kill_in_save':
    _in_save(step)
  else:
    assert mode == 'none', mode
  from mnist_flax import cli  # pylint: disable=import-outside-toplevel
  return cli.main(['train', *args])


if __name__ == '__main__':
  sys.exit(main(sys.argv[1:]))
