"""Files written whole or not at all: a reader (or a resumed run) never sees half a file.

The bottom layer, standard library only, so the data cache, the run directory and exports share it.
"""

from __future__ import annotations

import contextlib
import json
import os
import pathlib
from typing import Iterator


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[pathlib.Path]:
  """Yields a temporary sibling of `path`; renamed onto `path` only if the block succeeds.

  A reader (or a resumed run) never sees half a file, whatever kills the writer; the
  temporary name carries the pid, so two processes writing the same file do not collide.
  """
  path = pathlib.Path(path)
  tmp = path.with_name(f'{path.name}.part-{os.getpid()}')
  try:
    yield tmp
    tmp.replace(path)
  finally:
    if tmp.exists():
      tmp.unlink()


def write_text(path: str | os.PathLike, text: str) -> pathlib.Path:
  with atomic_path(path) as tmp:
    tmp.write_text(text)
  return pathlib.Path(path)


def write_json(path: str | os.PathLike, obj: dict) -> pathlib.Path:
  return write_text(path, json.dumps(obj, indent=2, sort_keys=True) + '\n')


def read_json(path: str | os.PathLike) -> dict:
  return json.loads(pathlib.Path(path).read_text())
