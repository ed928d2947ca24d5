"""The shipped recipes: `mnist-flax train --config NAME` for each module `NAME.py` here.

Each module defines `get_config()` returning a config that fits `config.default_config()`'s
schema; its docstring says what it reaches and how it was measured. They ship in the package,
so a bare name works from any folder after a plain `pip install`; a recipe may build on another
(`from mnist_flax.configs import fast995`). Research configs that are not recipes stay in the
repository's `experiments/configs/` and are passed as paths.
"""

from __future__ import annotations

import importlib
import os
import pathlib
import pkgutil

import ml_collections

from mnist_flax import config as config_lib
from mnist_flax.errors import ConfigError


def names() -> list[str]:
  """The shipped recipes' names, sorted."""
  return sorted(m.name for m in pkgutil.iter_modules(__path__) if not m.name.startswith('_'))


def is_path(source: str | os.PathLike) -> bool:
  """A config file (`my/exp.py`, `exp.py`) rather than a recipe's name (`speedrun`)."""
  text = os.fspath(source)
  return (isinstance(source, pathlib.PurePath) or text.endswith('.py') or '/' in text
          or os.sep in text)


def load(source: str | os.PathLike, validate: bool = True) -> ml_collections.ConfigDict:
  """The config of a shipped recipe by name, or of a Python file with `get_config()` by path."""
  if is_path(source):
    return config_lib.load_config_file(source, validate=validate)
  if source not in names():
    raise ConfigError(f'unknown config {source!r}: give a shipped recipe ({", ".join(names())}) '
                      f'or the path of a .py file with a get_config() function')
  module = importlib.import_module(f'{__name__}.{source}')
  return config_lib.config_of_module(module, f'recipe {source!r}', validate=validate)
