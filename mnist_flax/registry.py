"""Every kind of named part (model, loss, metric, optimizer, schedule, data set, data source, TTA
views) is picked from one `Registry`, registered one way and reported unknown one way.

    MODELS = Registry('model', 'mnist_flax.models.register')   # in the part's own module
    register = MODELS.register                                  # the name users import

    @register('tiny')                                           # or register('tiny', obj)
    class Tiny(nn.Module): ...

    MODELS.get('tiny')     # the object; an unknown name is one ConfigError line
    MODELS.names()         # registered names, in registration order

User code reaches a registry through `config.imports` (modules or .py files that every command
imports before it resolves a name: `import_modules`), so a part registered in your own file exists
in every process that reads the config or a run directory made with it.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import pathlib
import sys
from typing import Callable, Generic, Iterable, Iterator, Optional, TypeVar, overload

from mnist_flax.errors import ConfigError

T = TypeVar('T')

IMPORTS_HELP = 'in a module named in config.imports'


class Registry(Generic[T]):
  """A name -> object table for one kind of part.

  `kind` names the part in messages ('model'); `hint` is how a user adds one: the dotted name of
  the register function ('mnist_flax.models.register', shown as a decorator), or a full phrase
  containing '(' in which `{name}` stands for the unknown name. `fallback(name)`, if given, is
  asked for names not registered (optax's optimizers) and returns None when it has none;
  `fallback_names` says in messages what it accepts.
  """

  def __init__(self, kind: str, hint: str, *, fallback: Optional[Callable[[str], Optional[T]]] = None,
               fallback_names: str = ''):
    self.kind = kind
    self.hint = hint
    self._fallback = fallback
    self._fallback_names = fallback_names
    self._table: dict[str, T] = {}

  @overload
  def register(self, name: str) -> Callable[[T], T]: ...
  @overload
  def register(self, name: str, obj: T) -> T: ...

  def register(self, name, obj=None):
    """`@register(name)` on a class or function, or `register(name, obj)`; returns `obj`.

    A second registration of a name is an error naming what holds it, so two extensions cannot
    silently replace each other (`import_modules` runs each user file once per process).
    """
    if not isinstance(name, str) or not name:
      raise ValueError(f'a {self.kind} name must be a non-empty string, got {name!r}')

    def add(obj: T) -> T:
      held = self._table.get(name)
      if held is not None:
        raise ValueError(f'{self.kind} name {name!r} is already registered to {_describe(held)}')
      self._table[name] = obj
      return obj
    return add if obj is None else add(obj)

  def get(self, name: str) -> T:
    """The object registered as `name` (or the fallback's); else ConfigError in the one format."""
    if name in self._table:
      return self._table[name]
    found = self._fallback(name) if self._fallback and isinstance(name, str) else None
    if found is None:
      raise ConfigError(self.unknown_message(name))
    return found

  def unknown_message(self, name) -> str:
    known = ', '.join(self._table) or '(none)'
    if self._fallback_names:
      known += f' or {self._fallback_names}'
    hint = self.hint.format(name=repr(name)) if '(' in self.hint else f'@{self.hint}({name!r})'
    return f'unknown {self.kind} {name!r}; known: {known}; register one with {hint} {IMPORTS_HELP}'

  __getitem__ = get  # `MODELS['cnn']`, as when the tables were dicts

  def names(self) -> list[str]:
    """The registered names, in registration order (without the fallback's)."""
    return list(self._table)

  def items(self) -> list[tuple[str, T]]:
    return list(self._table.items())

  def values(self) -> list[T]:
    return list(self._table.values())

  def __contains__(self, name) -> bool:
    """Whether `get(name)` succeeds (the fallback included)."""
    try:
      self.get(name)
    except ConfigError:
      return False
    return True

  def __iter__(self) -> Iterator[str]:
    return iter(list(self._table))

  def __len__(self) -> int:
    return len(self._table)

  def __repr__(self) -> str:
    return f'Registry({self.kind!r}: {", ".join(self._table)})'


def _describe(obj) -> str:
  name = getattr(obj, '__qualname__', None) or getattr(obj, 'name', None) or type(obj).__name__
  module = getattr(obj, '__module__', None)
  return f'{module}.{name}' if module and hasattr(obj, '__qualname__') else str(name)


# ---------------------------------------------------------------------------- config.imports

IMPORT_HELP = 'give a module on sys.path or a path to a .py file'


def resolve_import(entry: str, base_dir: Optional[pathlib.Path] = None) -> str:
  """A `config.imports` entry as it is saved: a module name unchanged, a `.py` path absolute
  (relative ones are relative to `base_dir`, the config file's folder, else the working
  directory), so that later commands run from anywhere find the same file."""
  if not isinstance(entry, str) or not entry.strip():
    raise ConfigError(f'config.imports entry {entry!r} is invalid: {IMPORT_HELP}')
  entry = entry.strip()
  if not _is_path(entry):
    return entry
  path = pathlib.Path(entry).expanduser()
  if not path.is_absolute():
    path = (base_dir or pathlib.Path.cwd()) / path
  return str(path.resolve())


def _is_path(entry: str) -> bool:
  return entry.endswith('.py') or '/' in entry or '\\' in entry


_LOADED: dict[str, object] = {}  # resolved .py path -> its module: each file runs once per process


def import_modules(entries: Iterable[str], base_dir: Optional[pathlib.Path] = None) -> list:
  """Imports each `config.imports` entry (module names and .py paths), once per process.

  A module or file that cannot be imported is one ConfigError naming it; an exception raised
  while it runs (a duplicate registration, a bug) is one too, with its type and message.
  """
  modules = []
  for entry in entries or ():
    entry = resolve_import(entry, base_dir)
    modules.append(_import_path(entry) if _is_path(entry) else _import_name(entry))
  return modules


def _import_name(name: str):
  try:
    return importlib.import_module(name)
  except ModuleNotFoundError as e:
    if e.name and (name == e.name or name.startswith(e.name + '.')):
      raise ConfigError(f'cannot import {name!r} named in config.imports: {e}; {IMPORT_HELP}') from e
    raise ConfigError(f'{name!r} named in config.imports failed to import: '
                      f'{type(e).__name__}: {e}') from e
  except Exception as e:  # the user's module: one line, not a traceback
    raise ConfigError(f'{name!r} named in config.imports failed to import: '
                      f'{type(e).__name__}: {e}') from e


def _import_path(path: str):
  if path in _LOADED:
    return _LOADED[path]
  file = pathlib.Path(path)
  if not file.is_file():
    raise ConfigError(f'cannot import {path!r} named in config.imports: no such file; '
                      f'{IMPORT_HELP}')
  # A name of its own per file (the stem alone could shadow an installed module or a second
  # file of the same name), registered in sys.modules so that pickling and dataclasses work.
  digest = hashlib.sha1(path.encode('utf-8')).hexdigest()[:8]
  name = f'mnist_flax_imports_{file.stem}_{digest}'
  spec = importlib.util.spec_from_file_location(name, file)
  module = importlib.util.module_from_spec(spec)
  sys.modules[name] = module
  try:
    spec.loader.exec_module(module)
  except Exception as e:
    del sys.modules[name]
    raise ConfigError(f'{path!r} named in config.imports failed to import: '
                      f'{type(e).__name__}: {e}') from e
  _LOADED[path] = module
  return module
