"""The notebook `experiments/mnist.ipynb` runs top to bottom on a CPU (its smoke config) and shows
what it promises: the devices, the curves, the confusion matrix and the custom-image prediction.

Executed with nbclient in a real Jupyter kernel (this venv's python3 kernel), so it can never
silently rot. `MNIST_FLAX_NOTEBOOK_SMOKE=1` shrinks the training to seconds; the install cell is
skipped because `mnist_flax` is importable.
"""

import re

import nbformat
import pytest
from nbclient import NotebookClient

from conftest import REPO
from mnist_flax.reporting import report

NOTEBOOK = REPO / 'experiments' / 'mnist.ipynb'


def _cells_by_tag(nb) -> dict:
  return {tag: cell for cell in nb.cells for tag in cell.get('metadata', {}).get('tags', [])}


def _text(cell) -> str:
  return ''.join(out.get('text', '') + out.get('data', {}).get('text/plain', '')
                 for out in cell.get('outputs', []))


def _has_image(cell) -> bool:
  return any('image/png' in out.get('data', {}) for out in cell.get('outputs', []))


def test_notebook_is_committed_without_outputs():
  nb = nbformat.read(NOTEBOOK, as_version=4)
  nbformat.validate(nb)
  assert all(not cell.get('outputs') for cell in nb.cells if cell.cell_type == 'code')
  tags = _cells_by_tag(nb)
  for tag in ('settings', 'install', 'parameters', 'devices', 'samples', 'class_counts', 'train', 'curves',
              'confusion', 'mistakes', 'prediction'):
    assert tag in tags, tag
  assert 'find_spec' in tags['install'].source  # install is skipped when already importable
  assert "'-c', pins.name" in tags['install'].source  # the runtime's JAX etc. are pinned
  assert 'REPO_URL =' in tags['settings'].source and 'REPO_URL =' not in tags['install'].source
  assert 'MNIST_FLAX_NOTEBOOK_SMOKE' in tags['parameters'].source


@pytest.mark.slow
def test_notebook_runs_on_cpu(idx_dir, prepared_data_env, tmp_path, monkeypatch):
  workdir = tmp_path / 'run'
  for key in ('MNIST_IDX_DIR', 'TFDS_DATA_DIR', 'JAX_NUM_CPU_DEVICES'):
    monkeypatch.setenv(key, prepared_data_env[key])  # the kernel inherits this environment
  monkeypatch.setenv('MNIST_FLAX_NOTEBOOK_SMOKE', '1')
  monkeypatch.setenv('MNIST_FLAX_NOTEBOOK_WORKDIR', str(workdir))
  nb = nbformat.read(NOTEBOOK, as_version=4)
  NotebookClient(nb, timeout=600, kernel_name='python3',
                 resources={'metadata': {'path': str(tmp_path)}}).execute()
  cells = _cells_by_tag(nb)
  assert 'mnist_flax' in _text(cells['install'])
  assert re.search(r'versions: jax \d+\.\d+.*flax \d.*tensorflow ', _text(cells['install']))
  assert re.search(r'devices: 2 x cpu', _text(cells['devices']))
  for tag in ('samples', 'class_counts', 'curves', 'confusion', 'mistakes', 'prediction'):
    assert _has_image(cells[tag]), f'cell {tag!r} shows no image'
  assert re.search(r'prediction: \d \(p=0\.\d{3}\)', _text(cells['prediction']))
  assert re.search(r'epoch +2/2', _text(cells['train']))
  # The notebook trained the library's way: a full run directory, and its own evaluation of the
  # returned state agrees with the run's summary.
  summary = report.read_summary(workdir)
  accuracy = float(re.search(r'test accuracy (\d\.\d+)', _text(cells['confusion'])).group(1))
  assert accuracy == pytest.approx(summary['test_accuracy'], abs=2e-4)
  assert summary['test_accuracy'] > 0.5
