"""Plots and reports: `mnist-flax explore`, `mnist-flax report` and the end-of-run report.

One tiny run (trained once per module) feeds every test; the CLI runs in subprocesses only where
the command itself is under test.
"""

import shutil

import numpy as np
import pytest
from PIL import Image

from conftest import run_cli, tiny_overrides
from mnist_flax import cli, config as config_lib, files
from mnist_flax.reporting import explore, plots, report
from mnist_flax.runs import rundir
from mnist_flax.training import train

MNIST_TRAIN_COUNTS = [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
MNIST_TEST_COUNTS = [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]


@pytest.fixture(scope='module')
def tiny_run(idx_dir, tfds_dir, tmp_path_factory):
  workdir = tmp_path_factory.mktemp('report') / 'run'
  config = config_lib.apply_overrides(config_lib.default_config(),
                                      tiny_overrides(idx_dir, tfds_dir, workdir))
  train.train_and_evaluate(config)
  return workdir


def check_png(path, min_size=(600, 300), max_size=(2000, 1600)):
  """A real, non-blank PNG of a readable size; returns its (width, height)."""
  with Image.open(path) as image:
    assert image.format == 'PNG', path
    width, height = image.size
    pixels = np.asarray(image.convert('L'), np.float32)
  assert min_size[0] <= width <= max_size[0] and min_size[1] <= height <= max_size[1], (path, image.size)
  assert pixels.std() > 10, f'{path} looks blank'
  return width, height


def table_rows(markdown, first_header):
  """The rows (lists of cells) of the first markdown table whose header starts with `first_header`."""
  lines = markdown.splitlines()
  prefix = first_header if first_header.startswith('|') else f'| {first_header} |'
  start = next(i for i, line in enumerate(lines) if line.startswith(prefix))
  rows = []
  for line in lines[start + 2:]:
    if not line.startswith('|'):
      break
    rows.append([c.strip() for c in line.strip('|').split(' | ')])
  return rows


def check_summary_numbers(markdown, summary):
  """The summary table of report.md states exactly the figures of summary.json."""
  values = dict(row[:2] for row in table_rows(markdown, '|  | value |'))
  assert float(values['test accuracy']) == summary['test_accuracy']
  assert float(values['test loss']) == round(summary['test_loss'], 6)
  # The count scored, from summary.json: all of MNIST's test images here.
  assert summary['test_count'] == 10000
  assert values['test images correct'] == f'{summary["test_correct"]} / {summary["test_count"]}'
  assert int(values['epochs']) == summary['epochs'] and int(values['steps']) == summary['steps']
  assert float(values['training time (s)']) == round(summary['train_seconds'], 1)
  assert int(values['parameters'].replace(',', '')) == summary['params']
  assert values['devices'] == summary['devices']


def test_end_of_run_writes_curves_and_a_short_report(tiny_run):
  summary = report.read_summary(tiny_run)
  assert check_png(tiny_run / report.CURVES_FILE) == (1500, 420)
  markdown = (tiny_run / report.REPORT_FILE).read_text()
  check_summary_numbers(markdown, summary)
  # One row per epoch, with the numbers of metrics.jsonl.
  epochs = table_rows(markdown, 'epoch')
  records = report.read_metrics(tiny_run)
  assert [int(r[0]) for r in epochs] == [1, 2]
  assert [float(r[4]) for r in epochs] == [round(r['test_accuracy'], 4) for r in records]
  assert 'mnist-flax report --workdir' in markdown  # says where the rest comes from


def test_cli_report_confusion_matrix_mistakes_and_compare(tiny_run, tmp_path, real_data_env):
  # A second run to compare with: the same history with other figures (no second training).
  other = tmp_path / 'other'
  other.mkdir()
  shutil.copy(tiny_run / 'config.json', other / 'config.json')
  files.write_json(other / report.SUMMARY_FILE, dict(report.read_summary(tiny_run),
                                                      test_accuracy=0.5, test_correct=5000))
  rundir.write_metrics(other, [dict(r, test_accuracy=r['test_accuracy'] / 2, test_loss=r['test_loss'] * 2)
                               for r in report.read_metrics(tiny_run)])
  out = tmp_path / 'out'
  result = run_cli(['report', '--workdir', str(tiny_run), '--compare', str(other), '--out', str(out)],
                   env=real_data_env)
  assert result.returncode == 0, result.stderr
  summary = report.read_summary(tiny_run)
  markdown = (out / report.REPORT_FILE).read_text()
  check_summary_numbers(markdown, summary)

  confusion = np.array([[int(c) for c in row[1:]] for row in table_rows(markdown, 'true \\ pred')])
  assert confusion.shape == (10, 10)
  assert confusion.sum() == 10000
  assert confusion.sum(axis=1).tolist() == MNIST_TEST_COUNTS
  # The report scores the checkpoint as training did (two devices, batches of 1,000): the same
  # count, which the report says.
  correct = int(np.trace(confusion))
  assert correct == summary['test_correct']
  assert f'That is equal to the {correct} counted by evaluation' in markdown
  assert f'{correct}/10000 correct' in result.stdout
  per_digit = table_rows(markdown, 'digit')
  assert [int(r[2]) for r in per_digit] == np.diag(confusion).tolist()

  sizes = {name: check_png(out / name) for name in (
      report.CURVES_FILE, report.CONFUSION_FILE, report.PER_CLASS_FILE, report.MISTAKES_FILE,
      report.COMPARE_FILE)}
  assert sizes[report.MISTAKES_FILE][0] >= 8 * 100  # 8 digits a row, each at least 100 px wide
  for name in sizes:
    assert f']({name})' in markdown, name

  # Side-by-side table: one column per run, each with its own figures.
  side = {row[0]: row[1:] for row in table_rows(markdown, '|  | run | other |')}
  assert side['test accuracy'] == [f'{summary["test_accuracy"]:.4f}', '0.5000']
  assert side['test images correct'] == [f'{summary["test_correct"]} / 10000', '5000 / 10000']


def test_most_confident_mistakes_and_confusion_matrix():
  labels = np.array([0, 1, 2, 3, 3])
  probs = np.full((5, 10), 0.01, np.float32)
  probs[0, 0] = 0.9  # right
  probs[1, 7] = 0.6  # wrong, less sure
  probs[2, 5] = 0.95  # wrong, surest
  probs[3, 3] = 0.5  # right
  probs[4, 8] = 0.7  # wrong
  assert report.most_confident_mistakes(labels, probs, k=2).tolist() == [2, 4]
  confusion = plots.confusion_matrix(labels, probs.argmax(1), 10)
  assert confusion.sum() == 5 and np.trace(confusion) == 2
  assert confusion[3, 8] == 1 and confusion[2, 5] == 1
  accuracy = report.per_class_accuracy(confusion)
  assert accuracy[0] == 1.0 and accuracy[3] == 0.5 and np.isnan(accuracy[9])


def test_report_of_a_running_run_without_checkpoint(tiny_run, tmp_path):
  running = tmp_path / 'running'
  running.mkdir()
  shutil.copy(tiny_run / 'config.json', running / 'config.json')
  rundir.write_metrics(running, report.read_metrics(tiny_run)[:1])
  result = report.build_report(running)
  assert result['analysis'] is None
  markdown = result['report'].read_text()
  assert 'running: epoch 1 of 2 done' in markdown
  check_png(running / report.CURVES_FILE)


def test_report_of_a_directory_without_results_is_one_clear_error(tmp_path, capsys):
  assert cli.main(['report', '--workdir', str(tmp_path)]) == cli.EXIT_FAILURE
  err = capsys.readouterr().err
  assert 'not a mnist_flax run directory' in err and 'Traceback' not in err
  assert len(err.strip().splitlines()) == 1


def test_cli_explore_writes_the_data_plots(idx_dir, tfds_dir, tmp_path, real_data_env):
  out = tmp_path / 'explore'
  result = run_cli(['explore', '--out', str(out), f'--config.idx_dir={idx_dir}',
                    f'--config.tfds_data_dir={tfds_dir}', '--config.data_source=idx'],
                   env=real_data_env)
  assert result.returncode == 0, result.stderr
  check_png(out / explore.SAMPLES_FILE)
  check_png(out / explore.CLASS_COUNTS_FILE)
  check_png(out / explore.MEAN_IMAGES_FILE)
  markdown = (out / explore.EXPLORE_FILE).read_text()
  assert '| digit | train | validation | test |' in markdown  # the default holds out 5,000
  rows = table_rows(markdown, 'digit')
  assert [int(r[1]) + int(r[2]) for r in rows[:10]] == MNIST_TRAIN_COUNTS
  assert [int(r[3]) for r in rows[:10]] == MNIST_TEST_COUNTS
  assert rows[10] == ['all', '55000', '5000', '10000']


def test_mean_images_and_class_counts():
  images = np.zeros((4, 28, 28, 1), np.uint8)
  images[0, 0, 0] = 200
  images[1, 0, 0] = 100
  labels = np.array([3, 3, 5, 5])
  means = explore.mean_images(images, labels)
  assert means.shape == (10, 28, 28) and means[3, 0, 0] == 150 and means[5].sum() == 0
  assert explore.class_counts(labels).tolist() == [0, 0, 0, 2, 0, 2, 0, 0, 0, 0]


def test_plots_leave_the_callers_matplotlib_backend_and_figures_alone(tmp_path):
  # A notebook's inline backend (here: svg, any non-Agg one) must survive the library's plots,
  # and no pyplot figure may pile up in the caller's session.
  import subprocess, sys  # pylint: disable=import-outside-toplevel,multiple-imports
  code = f'''
import matplotlib
matplotlib.use('svg')
import matplotlib.pyplot as plt
import numpy as np
from mnist_flax.reporting import report
confusion = np.diag(np.full(10, 100)) + 1
report.plot_per_class_accuracy(confusion, {str(tmp_path / 'per_class.png')!r})
report.plot_confusion_matrix(confusion, {str(tmp_path / 'confusion.png')!r})
print(matplotlib.get_backend(), len(plt.get_fignums()))
'''
  out = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, timeout=120)
  assert out.returncode == 0, out.stderr
  assert out.stdout.split() == ['svg', '0']
  check_png(tmp_path / 'per_class.png')
  check_png(tmp_path / 'confusion.png')
