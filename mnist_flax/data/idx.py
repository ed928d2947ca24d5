"""The official MNIST IDX files: find them in a folder, parse and validate them (plain numpy).

A wrong magic number, wrong shape, truncated or oversized file, or a label out of range is one
`DataError` that names the file and what was expected. Arrays come back in *file* order;
`sources.py` puts them in the canonical order.
"""

from __future__ import annotations

import gzip
import os
import pathlib
import struct

import numpy as np

from mnist_flax.data.spec import MNIST
from mnist_flax.errors import DataError

IDX_DIR_ENV = 'MNIST_IDX_DIR'
_H, _W, _ = MNIST.image_shape

# name -> (file stem, IDX magic number, shape) for the four official files.
IDX_FILES = {
    'train_images': ('train-images-idx3-ubyte', 2051, (MNIST.num_train, _H, _W)),
    'train_labels': ('train-labels-idx1-ubyte', 2049, (MNIST.num_train,)),
    'test_images': ('t10k-images-idx3-ubyte', 2051, (MNIST.num_test, _H, _W)),
    'test_labels': ('t10k-labels-idx1-ubyte', 2049, (MNIST.num_test,)),
}

OFFLINE_HELP = (
    'To train offline, put the four MNIST IDX files (train-images-idx3-ubyte.gz, '
    'train-labels-idx1-ubyte.gz, t10k-images-idx3-ubyte.gz, t10k-labels-idx1-ubyte.gz; gzipped or '
    f'not) in a folder and set {IDX_DIR_ENV}=/that/folder or --config.idx_dir=/that/folder.')


def parse_idx(data: bytes, path: str, expected_magic: int | None = None,
              expected_shape: tuple[int, ...] | None = None) -> np.ndarray:
  """Parses the bytes of one uncompressed IDX file; `path` is what errors call it."""
  if len(data) < 8:
    raise DataError(f'{path}: file too short ({len(data)} bytes) for an IDX header')
  magic = struct.unpack('>I', data[:4])[0]
  if expected_magic is not None and magic != expected_magic:
    raise DataError(f'{path}: wrong magic number {magic} (0x{magic:08x}); expected {expected_magic} '
                    f'(0x{expected_magic:08x}), the header of an IDX '
                    f'{"image" if expected_magic == 2051 else "label"} file')
  if (magic >> 8) != 0x08:
    raise DataError(f'{path}: IDX data type 0x{(magic >> 8) & 0xFF:02x} is not unsigned byte (0x08)')
  ndim = magic & 0xFF
  header = 4 + 4 * ndim
  if len(data) < header:
    raise DataError(f'{path}: truncated header ({len(data)} bytes, expected at least {header})')
  shape = struct.unpack('>' + 'I' * ndim, data[4:header])
  if expected_shape is not None and tuple(shape) != tuple(expected_shape):
    raise DataError(f'{path}: header says shape {tuple(shape)}; expected {tuple(expected_shape)}')
  size = int(np.prod(shape))
  if len(data) - header != size:
    raise DataError(f'{path}: truncated or oversized: {len(data) - header} data bytes, expected '
                    f'{size} for shape {tuple(shape)}')
  return np.frombuffer(data, dtype=np.uint8, offset=header).reshape(shape)


def read_idx(path: str | os.PathLike, expected_magic: int | None = None,
             expected_shape: tuple[int, ...] | None = None) -> np.ndarray:
  """Reads one IDX file (gzipped or raw) into a uint8 array, validating its header and size."""
  path = pathlib.Path(path)
  if not path.is_file():
    raise DataError(f'{path}: file not found')
  try:
    if path.suffix == '.gz':
      with gzip.open(path, 'rb') as f:
        data = f.read()
    else:
      data = path.read_bytes()
  except (OSError, EOFError, gzip.BadGzipFile) as e:
    raise DataError(f'{path}: not a readable gzip/IDX file ({e}); expected an MNIST IDX file') from None
  return parse_idx(data, str(path), expected_magic, expected_shape)


def find_idx_files(idx_dir: str | os.PathLike) -> dict[str, pathlib.Path]:
  """Maps each of the four IDX names to its file (`.gz` preferred) in `idx_dir`."""
  idx_dir = pathlib.Path(idx_dir).expanduser()
  if not idx_dir.is_dir():
    raise DataError(f'MNIST IDX folder {str(idx_dir)!r} does not exist or is not a folder. '
                    + OFFLINE_HELP)
  found, missing = {}, []
  for key, (stem, _, _) in IDX_FILES.items():
    for candidate in (idx_dir / f'{stem}.gz', idx_dir / stem):
      if candidate.is_file():
        found[key] = candidate
        break
    else:
      missing.append(f'{stem}.gz (or {stem})')
  if missing:
    raise DataError(f'MNIST IDX folder {str(idx_dir)!r} is missing: {", ".join(missing)}. '
                    + OFFLINE_HELP)
  return found


def read_idx_dir(idx_dir: str | os.PathLike) -> dict[str, np.ndarray]:
  """Reads and validates all four IDX files (file order); labels are checked to be in 0..9."""
  paths = find_idx_files(idx_dir)
  return check_labels({key: read_idx(path, *IDX_FILES[key][1:]) for key, path in paths.items()},
                      paths)


def check_labels(arrays: dict[str, np.ndarray], paths: dict) -> dict[str, np.ndarray]:
  """Checks the labels of parsed IDX arrays; `paths[key]` names each file in errors."""
  for key, path in paths.items():
    if key.endswith('labels') and arrays[key].max() >= MNIST.num_classes:
      raise DataError(f'{path}: label {int(arrays[key].max())} out of range; expected '
                      f'0..{MNIST.num_classes - 1}')
  return arrays
