"""Name -> object tables behind the extension points (`models.register`, `losses.register`)."""

from __future__ import annotations

from typing import Callable, TypeVar

T = TypeVar('T')


def registrar(table: dict[str, T], kind: str) -> Callable[[str], Callable[[T], T]]:
  """A `register(name)` decorator filling `table`; a second object under one name is an error
  (naming what holds it), so two extensions cannot silently replace each other."""
  def register(name: str) -> Callable[[T], T]:
    def wrap(obj: T) -> T:
      if name in table:
        raise ValueError(f'{kind} name {name!r} is already registered to {table[name].__name__}')
      table[name] = obj
      return obj
    return wrap
  return register
