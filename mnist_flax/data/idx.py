"""IDX files (MNIST's format): find a data set's four files in a folder, parse and validate them.

A wrong magic number, wrong shape, truncated or oversized file, or a label out of range is one
`DataError` that names the file and what was expected. `read_idx_dir` returns arrays in *file*
order, with the data set's storage undone (`from_files`: EMNIST's transposed images, its letters'
labels from 1); `sources.py` puts them in the canonical order. EMNIST's files may also be read
straight from NIST's zip (`read_archive`).
"""

from __future__ import annotations

import gzip
import os
import pathlib
import struct
import zipfile

import numpy as np

from mnist_flax.data.spec import MNIST, DatasetSpec
from mnist_flax.errors import DataError

IDX_DIR_ENV = MNIST.idx.idx_dir_env


def idx_files(spec: DatasetSpec) -> dict[str, tuple[str, int, tuple]]:
  """name -> (file stem, IDX magic number, shape) of a data set's four files.

  The number of examples (None in the shape) is the file's own: a smaller copy in the same
  layout (a subset, the tests' mirror) reads as well, and `load_datasets` scales the validation
  split to it; images and labels of a split must agree (`from_files`).
  """
  height, width, _ = spec.image_shape
  out = {}
  for key, stem in spec.idx.stems.items():
    kind = key.split('_')[1]
    out[key] = (stem, 2051, (None, height, width)) if kind == 'images' else (stem, 2049, (None,))
  return out


# The four official MNIST files.
IDX_FILES = idx_files(MNIST)


def offline_help(spec: DatasetSpec = MNIST) -> str:
  """How to train offline on `spec`'s files (the last sentence of every data error)."""
  layout = spec.idx
  names = ', '.join(f'{stem}.gz' for stem in layout.stems.values())
  archive = f' (or {layout.archive} itself)' if layout.archive else ''
  return (f'To train offline, put the four {spec.title} IDX files ({names}; gzipped or not) in a '
          f'folder{archive} and set {layout.idx_dir_env}=/that/folder or '
          '--config.idx_dir=/that/folder.')


OFFLINE_HELP = offline_help(MNIST)


def parse_idx(data: bytes, path: str, expected_magic: int | None = None,
              expected_shape: tuple | None = None) -> np.ndarray:
  """Parses the bytes of one uncompressed IDX file; `path` is what errors call it. A None in
  `expected_shape` accepts any size there."""
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
  if expected_shape is not None and (len(shape) != len(expected_shape) or any(
      want is not None and got != want for got, want in zip(shape, expected_shape))):
    wanted = tuple('N' if d is None else d for d in expected_shape)
    raise DataError(f'{path}: header says shape {tuple(shape)}; expected '
                    f'({", ".join(map(str, wanted))}{"," if len(wanted) == 1 else ""})')
  size = int(np.prod(shape))
  if len(data) - header != size:
    raise DataError(f'{path}: truncated or oversized: {len(data) - header} data bytes, expected '
                    f'{size} for shape {tuple(shape)}')
  return np.frombuffer(data, dtype=np.uint8, offset=header).reshape(shape)


def _gunzip(data: bytes, path: str) -> bytes:
  try:
    return gzip.decompress(data)
  except (OSError, EOFError, gzip.BadGzipFile) as e:
    raise DataError(f'{path}: not a readable gzip/IDX file ({e}); expected an IDX file') from None


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


def find_idx_files(idx_dir: str | os.PathLike,
                   spec: DatasetSpec = MNIST) -> dict[str, pathlib.Path]:
  """Maps each of the four IDX names to its file (`.gz` preferred) in `idx_dir`.

  A data set shipped in an archive (EMNIST) is also found in the archive's own folder
  (`idx_dir/gzip/`), as unzipping it leaves it.
  """
  idx_dir = pathlib.Path(idx_dir).expanduser()
  help_ = offline_help(spec)
  if not idx_dir.is_dir():
    raise DataError(f'{spec.title} IDX folder {str(idx_dir)!r} does not exist or is not a folder. '
                    + help_)
  folders = [idx_dir] + ([idx_dir / spec.idx.archive_dir] if spec.idx.archive_dir else [])
  found, missing = {}, []
  for key, stem in spec.idx.stems.items():
    candidates = [folder / name for folder in folders for name in (f'{stem}.gz', stem)]
    path = next((c for c in candidates if c.is_file()), None)
    if path is None:
      missing.append(f'{stem}.gz (or {stem})')
    else:
      found[key] = path
  if missing:
    raise DataError(f'{spec.title} IDX folder {str(idx_dir)!r} is missing: {", ".join(missing)}. '
                    + help_)
  return found


def read_idx_dir(idx_dir: str | os.PathLike, spec: DatasetSpec = MNIST) -> dict[str, np.ndarray]:
  """Reads and validates the four IDX files of `spec` in a folder (file order, `from_files`
  applied). A folder holding the data set's archive (EMNIST's gzip.zip) is read from it."""
  archive = pathlib.Path(idx_dir).expanduser() / spec.idx.archive if spec.idx.archive else None
  if archive is not None and archive.is_file():
    try:
      find_idx_files(idx_dir, spec)
    except DataError:  # the unzipped files are not there: the archive is
      return read_archive(archive, spec)
  paths = find_idx_files(idx_dir, spec)
  files = idx_files(spec)
  return from_files({key: read_idx(path, *files[key][1:]) for key, path in paths.items()},
                    paths, spec)


def read_archive(path: str | os.PathLike, spec: DatasetSpec) -> dict[str, np.ndarray]:
  """The four IDX files of `spec` read from inside its zip archive (EMNIST's gzip.zip)."""
  path = pathlib.Path(path)
  files = idx_files(spec)
  arrays, names = {}, {}
  try:
    with zipfile.ZipFile(path) as archive:
      members = set(archive.namelist())
      for key, (stem, magic, shape) in files.items():
        inside = '/'.join(p for p in (spec.idx.archive_dir, stem) if p)
        member = next((m for m in (inside + '.gz', inside) if m in members), None)
        if member is None:
          raise DataError(f'{path}: the archive holds no {inside}.gz; expected {spec.title}\'s '
                          f'files in its folder {spec.idx.archive_dir or "(top)"}/. '
                          + offline_help(spec))
        names[key] = f'{path}:{member}'
        data = archive.read(member)
        if member.endswith('.gz'):
          data = _gunzip(data, names[key])
        arrays[key] = parse_idx(data, names[key], magic, shape)
  except (zipfile.BadZipFile, OSError, EOFError) as e:
    raise DataError(f'{path}: not a readable zip archive ({e}); expected {spec.title}\'s '
                    f'{spec.idx.archive}. ' + offline_help(spec)) from None
  return from_files(arrays, names, spec)


def check_labels(arrays: dict[str, np.ndarray], paths: dict,
                 spec: DatasetSpec = MNIST) -> dict[str, np.ndarray]:
  """Checks the labels of parsed IDX arrays (as stored); `paths[key]` names each file in errors."""
  first = spec.idx.label_offset if spec.idx else 0
  last = first + spec.num_classes - 1
  for key, path in paths.items():
    labels = arrays[key]
    if key.endswith('labels') and len(labels) and (labels.max() > last or labels.min() < first):
      bad = int(labels.max()) if labels.max() > last else int(labels.min())
      raise DataError(f'{path}: label {bad} out of range; expected {first}..{last}')
  return arrays


def from_files(arrays: dict[str, np.ndarray], paths: dict,
               spec: DatasetSpec) -> dict[str, np.ndarray]:
  """Labels and counts checked, then the data set's storage undone: images transposed back upright
  (EMNIST stores them column by column), labels counted from 0 (EMNIST Letters' from 1)."""
  arrays = dict(check_labels(arrays, paths, spec))
  for split in ('train', 'test'):
    images, labels = arrays[f'{split}_images'], arrays[f'{split}_labels']
    if len(images) != len(labels):
      raise DataError(f'{paths[f"{split}_images"]} holds {len(images)} images but '
                      f'{paths[f"{split}_labels"]} {len(labels)} labels; expected one label per '
                      f'image (the {spec.title} files of one release)')
  layout = spec.idx
  for key in arrays:
    if key.endswith('images') and layout.transposed:
      arrays[key] = np.ascontiguousarray(arrays[key].transpose(0, 2, 1))
    if key.endswith('labels') and layout.label_offset:
      arrays[key] = arrays[key] - np.uint8(layout.label_offset)
  return arrays
