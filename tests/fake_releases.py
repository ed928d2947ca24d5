"""Small stand-ins for the official Fashion-MNIST, KMNIST and EMNIST files, in their real layout.

The real files cannot be downloaded in the tests: `write_release` writes a few images per split
of a built-in data set the way its publisher does (four gzipped IDX files; for EMNIST one
`gzip.zip` holding `gzip/emnist-<split>-*.gz`, images stored transposed, letters labelled from
1), and returns what the data layer must read back (upright images, labels from 0, file order).
`registered` gives the entries a test puts in place of TFDS's checksums to serve them from a
mirror, in the test's process or, through `checksums_module`, in a fresh `mnist-flax` process.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import pathlib
import zipfile

import numpy as np

from mnist_flax.data import download, spec as spec_lib

PER_SPLIT = 64  # images per split: small, and enough for every class of EMNIST Balanced (47)


def idx_bytes(array: np.ndarray) -> bytes:
  """An uncompressed IDX file of a uint8 array (magic 0x0800 | ndim, big-endian sizes)."""
  array = np.asarray(array, np.uint8)
  header = np.array([0x0800 | array.ndim, *array.shape], '>u4').tobytes()
  return header + array.tobytes()


def images_for(labels: np.ndarray, shape: tuple[int, int], seed: int) -> np.ndarray:
  """One fixed random pattern per class, noised: learnable, and lopsided (so a transposition
  shows)."""
  rng = np.random.default_rng(seed)
  classes = int(labels.max()) + 1
  templates = (rng.random((classes,) + shape) < 0.25) * 200
  templates[:, :3, :] = 255  # a bright top edge: an image read transposed has a bright left edge
  noise = rng.integers(0, 40, (len(labels),) + shape)
  return np.maximum(templates[labels], noise).astype(np.uint8)


def arrays_for(spec: spec_lib.DatasetSpec, seed: int = 0,
               n: int = PER_SPLIT) -> dict[str, np.ndarray]:
  """Upright images and labels from 0, in file order: what every source must give back."""
  out = {}
  for k, split in enumerate(('train', 'test')):
    labels = (np.arange(n) * 7 + k + seed) % spec.num_classes  # every class, not sorted
    out[f'{split}_labels'] = labels.astype(np.uint8)
    out[f'{split}_images'] = images_for(labels, spec.image_shape[:2], seed + 10 * k)
  return out


def stored(spec: spec_lib.DatasetSpec, arrays: dict[str, np.ndarray]) -> dict[str, bytes]:
  """The four IDX files' bytes as the publisher stores them (transposed, labels offset)."""
  layout = spec.idx
  files = {}
  for key, stem in layout.stems.items():
    array = arrays[key]
    if key.endswith('images') and layout.transposed:
      array = array.transpose(0, 2, 1)
    if key.endswith('labels'):
      array = array + layout.label_offset
    files[stem] = idx_bytes(array)
  return files


def write_release(folder: pathlib.Path, specs, seed: int = 0) -> dict[str, dict[str, np.ndarray]]:
  """Writes the release of `specs` (data sets sharing one url_checksums file: one data set, or
  EMNIST's splits) into `folder`; returns {data set name: arrays_for(...)}."""
  folder.mkdir(parents=True, exist_ok=True)
  expected, members = {}, {}
  for spec in specs:
    expected[spec.name] = arrays_for(spec, seed)
    members.update(stored(spec, expected[spec.name]))
  archive = specs[0].idx.archive
  if archive:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, 'w') as zf:  # as NIST's: gzipped IDX files in a folder
      for stem, data in members.items():
        zf.writestr(f'{specs[0].idx.archive_dir}/{stem}.gz', gzip.compress(data, mtime=0))
    (folder / archive).write_bytes(buffer.getvalue())
  else:
    for stem, data in members.items():
      (folder / f'{stem}.gz').write_bytes(gzip.compress(data, mtime=0))
  return expected


def registered(folder: pathlib.Path, url: str) -> dict[str, download.Registered]:
  """TFDS-style checksum entries of every file in `folder`, served from `url` (a mirror)."""
  return {p.name: download.Registered(url + p.name, p.stat().st_size,
                                      hashlib.sha256(p.read_bytes()).hexdigest())
          for p in sorted(folder.iterdir()) if p.is_file()}


def checksums_module(path: pathlib.Path, entries: dict) -> pathlib.Path:
  """A module that puts `entries` ({url_checksums name: registered(...)}) in place of TFDS's
  registered checksums when imported: named in `config.imports`, it does in a fresh
  `mnist-flax` process what a test's monkeypatch does in its own."""
  literal = {group: {name: list(r) for name, r in files.items()}
             for group, files in entries.items()}
  path.write_text(
      '"""TFDS\'s registered checksums replaced by a test mirror\'s."""\n\n'
      'from mnist_flax.data import download\n\n'
      f'MIRROR = {literal!r}\n'
      'REAL = download.registered_files\n\n\n'
      "def registered_files(checksums='mnist'):\n"
      '  if checksums in MIRROR:\n'
      '    return {name: download.Registered(*entry)\n'
      '            for name, entry in MIRROR[checksums].items()}\n'
      '  return REAL(checksums)\n\n\n'
      'download.registered_files = registered_files\n')
  return path
