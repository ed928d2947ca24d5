"""`mnist-flax`: a thin launcher over the library.

    mnist-flax train [--config NAME|FILE] [--config.FIELD=VALUE ...]
    mnist-flax eval --workdir DIR
    mnist-flax explore [--out DIR]
    mnist-flax report --workdir DIR [--compare DIR2 ...]
    mnist-flax predict [--workdir DIR ...] [--checkpoint C] [--tta T] [--top-k K] [--json]
                       [--show OUT.png] FILE...
    mnist-flax export --workdir RUN --out DIR
    mnist-flax serve [--workdir DIR ...] [--checkpoint C] [--tta T] [--host H] [--port P]

Every expected failure (bad config, data, checkpoint, image) is one line on stderr and a
non-zero exit code, never a traceback. Heavy imports (JAX, TFDS) happen inside the commands, so
`mnist-flax --help` and light commands start fast.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys

EXIT_USAGE = 2
EXIT_FAILURE = 1


def _quiet_logs():
  os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '3')
  logging.getLogger('absl').setLevel(logging.WARNING)
  logging.getLogger('jax._src.xla_bridge').setLevel(logging.WARNING)
  try:
    from absl import logging as absl_logging  # pylint: disable=import-outside-toplevel
    absl_logging.set_verbosity(absl_logging.WARNING)
  except ImportError:
    pass


def _load_config(args, overrides):
  from mnist_flax import config as config_lib, configs  # pylint: disable=import-outside-toplevel
  if args.config:  # a shipped recipe's name (mnist_flax/configs/) or a .py file's path
    config = configs.load(args.config, validate=False)
  else:  # the default config lives in the package: works without the repository checkout
    config = config_lib.default_config()
  config = config_lib.apply_overrides(config, overrides)
  config_lib.validate_config(config)
  return config


def cmd_train(args, overrides):
  config = _load_config(args, overrides)
  from mnist_flax import config as config_lib  # pylint: disable=import-outside-toplevel
  from mnist_flax.inference import predict  # pylint: disable=import-outside-toplevel
  from mnist_flax.training import train  # pylint: disable=import-outside-toplevel
  # The next run of the same config loads its compiled steps from disk instead of compiling
  # (speedrun on the loaded 2-core CPU: 23.1 -> 17.9 s per process; $MNIST_FLAX_CACHE='' turns
  # it off).
  predict.enable_compilation_cache()
  train.train_and_evaluate(config, fresh=args.fresh)
  from mnist_flax.reporting import report  # pylint: disable=import-outside-toplevel
  workdir = config_lib.resolve_workdir(config)
  summary = report.read_summary(workdir)
  validation = (f'  validation accuracy {summary["validation_accuracy"]:.4f}'
                if 'validation_accuracy' in summary else '')
  print(f'test accuracy {summary["test_accuracy"]:.4f}  test loss {summary["test_loss"]:.4f}'
        f'{validation}  ({summary["epochs"]} epochs, {summary["train_seconds"]:.1f}s training)  '
        f'run directory: {workdir}')
  return 0


def cmd_eval(args, overrides):
  from mnist_flax.training import evaluation  # pylint: disable=import-outside-toplevel
  metrics = evaluation.evaluate(args.workdir, checkpoint=args.checkpoint)
  print(f'test accuracy {metrics["accuracy"]:.4f}  test loss {metrics["loss"]:.4f}  '
        f'({metrics["correct"]}/{metrics["count"]} correct)  workdir: {args.workdir}')
  return 0


def cmd_ensemble(args, overrides):
  from mnist_flax.inference import ensemble  # pylint: disable=import-outside-toplevel
  result = ensemble.evaluate_ensemble(args.workdir, tta=args.tta, split=args.split)
  for member in result['members']:
    print(f'member {member["member"]}: {args.split} accuracy {member["accuracy"]:.4f} '
          f'(tta {args.tta})  {args.split} loss {member["loss"]:.4f}')
  print(f'ensemble of {len(result["members"])}: {args.split} accuracy {result["accuracy"]:.4f}  '
        f'({result["correct"]}/{result["count"]} correct, tta {args.tta})  '
        f'{args.split} loss {result["loss"]:.4f}')
  return 0


def cmd_explore(args, overrides):
  config = _load_config(args, overrides)
  from mnist_flax.reporting import explore  # pylint: disable=import-outside-toplevel
  result = explore.explore(config, args.out)
  counts, noun = result['counts'], result['spec'].noun
  for name, per_class in counts.items():
    print(f'{name:>10}: {sum(per_class):6d} images; per {noun} ' + ' '.join(map(str, per_class)))
  print('wrote ' + ', '.join(str(f) for f in result['files']))
  return 0


def cmd_report(args, overrides):
  from mnist_flax.reporting import report  # pylint: disable=import-outside-toplevel
  result = report.build_report(args.workdir, compare=args.compare or (), out_dir=args.out,
                               with_model=not args.no_model)
  analysis = result['analysis']
  if analysis is not None:
    confusion = analysis.confusion
    print(f'test set: {int(confusion.trace())}/{int(confusion.sum())} correct at step {analysis.step}')
  print(f'wrote {result["report"]} and ' + ', '.join(p.name for p in result['plots']))
  return 0


def cmd_predict(args, overrides):
  """Classifies image files; bad files are reported and the good ones still classified."""
  # Light imports only: JAX, Flax, Orbax, Pillow. Never TensorFlow/TFDS (start-up time).
  import json  # pylint: disable=import-outside-toplevel
  from mnist_flax.inference import ensemble, predict  # pylint: disable=import-outside-toplevel
  from mnist_flax.errors import ImageError  # pylint: disable=import-outside-toplevel
  predict.enable_compilation_cache()
  # One model is an ensemble of one: the same probabilities, one code path.
  classifier = ensemble.load_ensemble(args.workdir or [None], tta=args.tta,
                                      checkpoint=args.checkpoint)
  images, good, errors = [], [], {}
  for path in args.files:
    try:
      images.append(classifier.prepare(path))  # as the run's data set says (MNIST: its steps)
      good.append(path)
    except ImageError as e:
      errors[path] = str(e)
  found = {p.source: p for p in classifier.predictions(images, good, args.top_k)} if good else {}
  # Labels shown with their class names, unless the names are the labels' digits (MNIST).
  spec = classifier.spec
  names = spec.class_names != tuple(str(k) for k in range(spec.num_classes))
  if args.json:
    print(json.dumps([found[f].to_dict(classifier.name) if f in found
                      else {'file': f, 'error': errors[f]}
                      for f in args.files], indent=1))
  for path in args.files:
    if path in errors:
      print(f'mnist-flax predict: error: {errors[path]}', file=sys.stderr)
    elif not args.json:
      p = found[path]
      named = lambda k: f'{k} ({p.name_of(k)})' if names else str(k)  # noqa: E731
      ranked = ', '.join(f'{named(k)} {q:.4f}' for k, q in p.top_k)
      print(f'{path}  {named(p.label)}  {p.probability:.4f}' + (f'  (top {len(p.top_k)}: {ranked})'
                                                                if len(p.top_k) > 1 else ''))
  if args.show and found:
    from mnist_flax.reporting import plots  # pylint: disable=import-outside-toplevel
    plots.plot_predictions([found[f] for f in args.files if f in found], args.show)
    print(f'wrote {args.show}', file=sys.stderr)
  return EXIT_FAILURE if errors else 0


def cmd_export(args, overrides):
  from mnist_flax.inference import export  # pylint: disable=import-outside-toplevel
  summary = export.export_model(args.workdir, args.out, idx_dir=args.idx_dir,
                                overwrite=args.overwrite, checkpoint=args.checkpoint)
  print(f'exported {args.workdir} -> {args.out} ({export.directory_size(args.out) / 1e6:.2f} MB); '
        f'test accuracy of the exported weights: {summary["export"]["test_accuracy"]:.4f} '
        f'(run summary: {summary.get("test_accuracy", float("nan")):.4f})')
  return 0


SERVE_EXTRA_HINT = ('mnist-flax serve needs the serve extra ({missing} is not installed): '
                    'pip install "mnist_flax[serve]"')


def cmd_serve(args, overrides):
  """Serves the page and the API until SIGTERM or Ctrl-C; SIGTERM drains requests in flight."""
  import importlib  # pylint: disable=import-outside-toplevel
  for module in ('fastapi', 'uvicorn', 'multipart'):  # python-multipart: FastAPI's form parser
    try:
      importlib.import_module(module)
    except ImportError:
      print(f'mnist-flax serve: error: {SERVE_EXTRA_HINT.format(missing=module)}', file=sys.stderr)
      return EXIT_FAILURE
  import signal  # pylint: disable=import-outside-toplevel
  import uvicorn  # pylint: disable=import-outside-toplevel
  from mnist_flax.serving import batching, api  # pylint: disable=import-outside-toplevel
  from mnist_flax.inference import ensemble, predict  # pylint: disable=import-outside-toplevel
  predict.enable_compilation_cache()
  classifier = ensemble.load_ensemble(args.workdir or [None], tta=args.tta,
                                      checkpoint=args.checkpoint)
  sizes = tuple(s for s in batching.DEFAULT_BATCH_SIZES if s < args.max_batch) + (args.max_batch,)
  settings = api.Settings(max_body_bytes=int(args.max_body_mb * 2 ** 20),
                            max_images=min(args.max_images, args.max_batch), batch_sizes=sizes,
                            max_wait_ms=args.max_wait_ms, batching=not args.no_batching)
  app = api.create_app(classifier, settings)
  handler = logging.StreamHandler()
  handler.setFormatter(logging.Formatter('%(levelname)s:     %(message)s'))  # as uvicorn's
  api.log.addHandler(handler)
  api.log.setLevel(logging.INFO)
  api.log.propagate = False  # (absl may have given the root logger a handler too)
  config = uvicorn.Config(app, host=args.host, port=args.port, access_log=args.access_log,
                          timeout_graceful_shutdown=args.drain_seconds, log_level='info')
  terminated = []
  # uvicorn re-raises the signal it stopped on once it has drained; this handler takes that
  # (a plain exit code 0 after a clean SIGTERM drain, not death by signal).
  signal.signal(signal.SIGTERM, lambda signum, frame: terminated.append(signum))
  print(f'mnist-flax serve: model {classifier.name}; warming up, then serving on '
        f'http://{args.host}:{args.port}/ (API docs: /docs)', file=sys.stderr)
  uvicorn.Server(config).run()
  if terminated:
    print('mnist-flax serve: stopped by SIGTERM after draining the requests in flight',
          file=sys.stderr)
  return 0


def _batch(text: str) -> int:
  try:
    value = int(text)
  except ValueError:
    value = 0
  if value < 1 or value > 1024 or value & (value - 1):
    raise argparse.ArgumentTypeError(f'{text!r}: expected a power of two from 1 to 1024')
  return value


def _top_k(text: str) -> int:
  try:
    value = int(text)
  except ValueError:
    value = 0
  if not 1 <= value <= 10:
    raise argparse.ArgumentTypeError(f'{text!r}: expected an integer from 1 to 10')
  return value


# The shipped recipes are mnist_flax/configs/*.py (configs.names(); tests/test_config.py checks
# this list against it, so `--help` stays light to start).
CONFIG_HELP = ('a shipped recipe: accelerator, best, default, fast995, fastbest, robust or '
               'speedrun; or the path of a Python file with get_config() (default: default)')


def build_parser() -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(prog='mnist-flax', description=__doc__.split('\n\n')[0])
  sub = parser.add_subparsers(dest='command', required=True)

  p = sub.add_parser('train', help='train a config and evaluate it on the test set',
                     epilog='Override any config field with --config.FIELD=VALUE, '
                            'e.g. --config.num_epochs=2 --config.learning_rate=0.001')
  p.add_argument('--config', help=CONFIG_HELP)
  p.add_argument('--fresh', action='store_true',
                 help='start over in a workdir holding another run (moved to <workdir>.replaced-<time>)')
  p.set_defaults(func=cmd_train, accepts_overrides=True)

  p = sub.add_parser('eval', help="restore a run directory's latest checkpoint and evaluate it")
  p.add_argument('--workdir', required=True, help='run directory written by `mnist-flax train`')
  p.add_argument('--checkpoint', default='latest',
                 help="'latest' (default), 'best' (by validation metric) or a step number")
  p.set_defaults(func=cmd_eval)

  p = sub.add_parser('ensemble', help='test accuracy of several checkpoints averaged, with '
                                      'optional test-time augmentation (TTA)')
  p.add_argument('--workdir', required=True, action='append',
                 help='run directory (or DIR@STEP, DIR@best); repeat for each member')
  p.add_argument('--tta', default='none',
                 help='test-time views averaged per member: none (default), shift, shift_rotate '
                      'or one registered in ensemble.TTA_VIEWS')
  p.add_argument('--split', default='test', choices=['test', 'validation'],
                 help='score on the test set (reporting, default) or on the validation split '
                      '(choosing members/TTA; members need the same --config.validation_size)')
  p.set_defaults(func=cmd_ensemble)

  p = sub.add_parser('explore', help='plot sample digits, class counts and mean digits (PNGs)',
                     epilog='Reads the data a config trains on; --config.FIELD=VALUE overrides '
                            'apply, e.g. --config.idx_dir=/path/to/mnist')
  p.add_argument('--config', help=CONFIG_HELP)
  p.add_argument('--out', default='runs/explore', help='output folder (default: runs/explore)')
  p.set_defaults(func=cmd_explore, accepts_overrides=True)

  p = sub.add_parser('report', help='report.md and plots of a run: curves, confusion matrix, '
                                    'accuracy per digit, worst mistakes; --compare other runs')
  p.add_argument('--workdir', required=True, help='run directory (finished or still training)')
  p.add_argument('--compare', nargs='+', metavar='DIR', help='more run directories to overlay')
  p.add_argument('--out', help='output folder (default: the run directory)')
  p.add_argument('--no-model', action='store_true',
                 help='skip the checkpoint (no confusion matrix or mistakes; no JAX needed)')
  p.set_defaults(func=cmd_report)

  p = sub.add_parser('predict', help='classify your own digit images (default: the shipped '
                                     'pretrained model)')
  p.add_argument('files', nargs='+', metavar='FILE', help='image files (PNG, JPEG, ...; any size)')
  p.add_argument('--workdir', action='append',
                 help='run directory or exported model (default: the shipped model); repeat '
                      'it for an ensemble (averaged probabilities); DIR@best or DIR@STEP picks '
                      'a step of that member')
  p.add_argument('--checkpoint', default='latest',
                 help="a run directory's step: latest (default), best (by validation) or a number")
  p.add_argument('--tta', default='none',
                 help='test-time augmentation: none (default), shift (5 views) or shift_rotate (7)')
  p.add_argument('--top-k', type=_top_k, default=3, help='how many ranked labels (1-10; default 3)')
  p.add_argument('--json', action='store_true', help='print JSON instead of one line per file')
  p.add_argument('--show', metavar='OUT.png',
                 help='save each input beside the image the model saw and its probabilities')
  p.set_defaults(func=cmd_predict)

  p = sub.add_parser('serve', help='a page to draw digits on and a JSON API (POST /v1/predict), '
                                   "batched; needs the 'serve' extra")
  p.add_argument('--workdir', action='append',
                 help='run directory or exported model (default: the shipped model); repeat '
                      'it for an ensemble; DIR@best or DIR@STEP picks a step')
  p.add_argument('--checkpoint', default='latest',
                 help="a run directory's step: latest (default), best (by validation) or a number")
  p.add_argument('--tta', default='none', help='test-time augmentation: none, shift or shift_rotate')
  p.add_argument('--host', default='127.0.0.1',
                 help='address to bind (default 127.0.0.1: this machine only; 0.0.0.0 for all)')
  p.add_argument('--port', type=int, default=8000, help='port (default 8000)')
  p.add_argument('--max-batch', type=_batch, default=64,
                 help='most images per predict call, a power of two (default 64)')
  p.add_argument('--max-wait-ms', type=float, default=0.0,
                 help='how long the first request of a batch waits for others (default 0: '
                      'dispatch at once; requests arriving meanwhile form the next batch)')
  p.add_argument('--no-batching', action='store_true', help='one predict call per request')
  p.add_argument('--max-images', type=int, default=16, help='images per request (default 16)')
  p.add_argument('--max-body-mb', type=float, default=10.0, help='request body limit (default 10 MiB)')
  p.add_argument('--drain-seconds', type=float, default=10.0,
                 help='on SIGTERM, how long requests in flight may take to finish (default 10)')
  p.add_argument('--access-log', action=argparse.BooleanOptionalAction, default=True,
                 help='log every request (default: on)')
  p.set_defaults(func=cmd_serve)

  p = sub.add_parser('export', help="write a run's inference-only model (small; what ships in "
                                    'mnist_flax/pretrained)')
  p.add_argument('--workdir', required=True, help='run directory written by `mnist-flax train`')
  p.add_argument('--out', required=True, help='output directory')
  p.add_argument('--idx-dir', help='MNIST IDX folder for the accuracy check (default: $MNIST_IDX_DIR)')
  p.add_argument('--overwrite', action='store_true', help='replace a non-empty --out')
  p.add_argument('--checkpoint', default='latest',
                 help="the run's step: latest (default), best (by validation) or a number")
  p.set_defaults(func=cmd_export)
  return parser


def main(argv: list[str] | None = None) -> int:
  argv = list(sys.argv[1:] if argv is None else argv)
  parser = build_parser()
  args, rest = parser.parse_known_args(argv)
  overrides = [a for a in rest if a.startswith('--config.')]
  unknown = [a for a in rest if not a.startswith('--config.')]
  if unknown or (overrides and not getattr(args, 'accepts_overrides', False)):
    parser.error(f'unrecognized arguments: {" ".join(unknown or overrides)}')
  _quiet_logs()

  from mnist_flax.errors import USER_ERRORS  # pylint: disable=import-outside-toplevel
  try:
    return args.func(args, overrides)
  except USER_ERRORS as e:
    print(f'mnist-flax {args.command}: error: {e}', file=sys.stderr)
    if type(e).__name__ == 'PreemptedError':  # saved and stopped: the shell's 128 + signal code
      return 128 + e.signum
    return EXIT_USAGE if type(e).__name__ == 'ConfigError' else EXIT_FAILURE
  except KeyboardInterrupt:
    print(f'mnist-flax {args.command}: interrupted', file=sys.stderr)
    return 130


if __name__ == '__main__':
  sys.exit(main())
