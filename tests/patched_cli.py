"""`mnist-flax` in a fresh process, with what a test stands in for put in place first.

    python tests/patched_cli.py PATCH.json train --config.dataset=emnist_balanced ...

PATCH.json (every key optional):

* "checksums": {url_checksums name: {file name: [url, size, sha256]}}: used instead of TFDS's
  registered checksums, so a 127.0.0.1 mirror's small files verify (as the in-process download
  tests monkeypatch them);
* "split_sizes": {data set: {"train": n, "test": n}}: the built-in data sets' split sizes
  shrunk to those files';
* "imports": [path to a .py file, ...]: a user's module, imported before the command (where the
  data set or model it registers lives), as a config naming it would have every command do.
"""

import dataclasses
import importlib
import json
import pathlib
import sys


def main() -> int:
  patch = json.loads(pathlib.Path(sys.argv[1]).read_text())
  from mnist_flax.data import download, spec  # pylint: disable=import-outside-toplevel
  for name, sizes in patch.get('split_sizes', {}).items():
    spec.DATASETS[name] = dataclasses.replace(spec.DATASETS[name], split_sizes=sizes)
  checksums = {group: {name: download.Registered(*entry) for name, entry in files.items()}
               for group, files in patch.get('checksums', {}).items()}
  real = download.registered_files
  download.registered_files = lambda group='mnist': checksums.get(group) or real(group)
  for path in patch.get('imports', []):
    path = pathlib.Path(path)
    sys.path.insert(0, str(path.parent))
    importlib.import_module(path.stem)
  from mnist_flax import cli  # pylint: disable=import-outside-toplevel
  return cli.main(sys.argv[2:])


if __name__ == '__main__':
  sys.exit(main())
