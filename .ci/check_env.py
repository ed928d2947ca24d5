"""Fails unless this environment has exactly the pinned versions and no TensorFlow.

Run by the `colab` nox session after installing the package: proves that `pip install mnist_flax`
on a Colab TPU runtime keeps the runtime's JAX, Flax, Optax and Orbax and adds no TensorFlow.
"""

import importlib.metadata
import importlib.util
import sys


def main(pins_file: str) -> int:
  problems = []
  for line in open(pins_file, encoding='utf-8'):
    line = line.split('#', 1)[0].strip()
    if not line:
      continue
    name, wanted = line.split('==')
    try:
      have = importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
      have = 'not installed'
    if have != wanted:
      problems.append(f'{name}: {have}, expected {wanted}')
  for name in ('tensorflow', 'tensorflow-cpu', 'tf-nightly'):
    try:
      problems.append(f'{name} {importlib.metadata.version(name)} is installed; expected none')
    except importlib.metadata.PackageNotFoundError:
      pass
  if importlib.util.find_spec('tensorflow') is not None:
    problems.append('the module tensorflow is importable; expected none')
  for problem in problems:
    print(f'check_env: {problem}', file=sys.stderr)
  print(f'check_env: {"FAILED" if problems else "ok"}: pins of {pins_file}, no TensorFlow; '
        f'python {sys.version.split()[0]}')
  return 1 if problems else 0


if __name__ == '__main__':
  sys.exit(main(sys.argv[1]))
