"""Where XLA's training step spends its time, per operation (the XLA half of the per-op table).

    python experiments/op_table.py [--config default] [--steps 20] [--json out.json]

Compiles the config's train step exactly as `mnist-flax train` does (same CPU device split and
lowering, data resident on the device, via bench_steps.build), runs `--steps` steps under
`jax.profiler.trace`, and reads the trace's per-operation events (each HLO instruction that XLA's
CPU runtime executes is one event on a device's thread). Each event is named by its HLO
instruction; the compiled HLO says what it is, and its `op_name` metadata (the JAX primitive,
with `transpose(jvp(...))` for the backward pass) says which layer and which direction, so the
table groups them as: each convolution's forward, input gradient and kernel gradient, dense
layers (forward and gradients), element-wise and reduction passes, the all-reduce, the rest.
Times are per step and per device, summed over the instruction's events; the devices run side by
side, so a step takes about one device's sum. Compare with experiments/torch_ops.py (PyTorch's
profiler on the same network).
"""

from __future__ import annotations

import argparse
import collections
import gzip
import json
import pathlib
import re
import statistics
import sys
import tempfile
import time

REPO = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / 'experiments'))

# `%name = f32[64,14,14,64]{3,2,1,0} convolution(...), ..., metadata={op_name="..."}`
INSTRUCTION = re.compile(r'^\s*(?:ROOT )?%?([\w.\-]+) = (\S+?)\s(?:\{[^}]*\}\s)?([\w\-]+)\((.*)$')
OP_NAME = re.compile(r'op_name="([^"]*)"')
SHAPE = re.compile(r'\[([\d,]*)\]')
# A computation's header line: `%fused_computation.3 (param_0.3: ...) -> f32[1,3,3,32] {`
COMPUTATION = re.compile(r'^(?:ENTRY )?%?([\w.\-]+) .*\{$')


def instructions(hlo_text: str) -> dict[str, dict]:
  """HLO instruction name -> {'opcode', 'shape', 'op_name', 'calls', 'computation'} of a compiled
  module."""
  out = {}
  computation = ''
  for line in hlo_text.splitlines():
    if not line.startswith(' '):
      header = COMPUTATION.match(line)
      computation = header.group(1) if header else computation
      continue
    match = INSTRUCTION.match(line)
    if not match:
      continue
    name, shape, opcode, rest = match.groups()
    op_name = OP_NAME.search(rest)
    calls = re.search(r'calls=%?([\w.\-]+)', rest)
    out[name] = {'opcode': opcode, 'shape': shape, 'op_name': op_name.group(1) if op_name else '',
                 'calls': calls.group(1) if calls else '', 'computation': computation}
  return out


def _dims(shape: str) -> tuple[int, ...]:
  match = SHAPE.search(shape)
  return tuple(int(d) for d in match.group(1).split(',') if d) if match else ()


def _layer(op_name: str) -> str:
  """The module path inside the model, e.g. 'Conv_1' or 'Dense_0', from JAX's op_name."""
  parts = [p for p in re.split(r'[/()]', op_name) if re.match(r'^(Conv|Dense|BatchNorm)\w*_\d+$', p)]
  return parts[-1] if parts else ''


def _layer_with_outputs(channels: int, hlo: dict[str, dict]) -> str:
  """The convolution layer whose forward pass makes `channels` feature maps."""
  for info in hlo.values():
    if (info['opcode'] == 'convolution' and 'transpose(' not in info['op_name']
        and _dims(info['shape'])[-1:] == (channels,) and _layer(info['op_name'])):
      return _layer(info['op_name'])
  return 'conv'


def classify(name: str, info: dict, hlo: dict[str, dict]) -> str:
  """A readable row of the table for one executed instruction `name`."""
  opcode, op_name = info['opcode'], info['op_name']
  if opcode == 'fusion' and info['calls']:
    # A convolution or dot inside the fused computation decides the row.
    inner = [v for v in hlo.values() if v['opcode'] in ('convolution', 'dot')
             and v['computation'] == info['calls']]
    if inner:
      # XLA keeps no metadata on some fused convolutions; only a gradient loses it here.
      info = dict(inner[0], shape=info['shape'],
                  op_name=inner[0]['op_name'] or op_name or 'transpose(?)')
      opcode, op_name = info['opcode'], info['op_name']
  backward = 'transpose(' in op_name
  layer = _layer(op_name)
  if opcode == 'convolution':
    dims = _dims(info['shape'])
    if not backward:
      return f'{layer or "conv"} forward'
    # The kernel gradient's result holds the kernel's two small spatial sizes (3 x 3, in some
    # layout); the input gradient's is shaped like the layer's input (batch, height, width, in).
    small = [d for d in dims if d <= 7]
    if len(small) >= 2 and len(set(small)) < len(small):
      return f'{layer or _layer_with_outputs(dims[-1], hlo)} kernel gradient'
    return f'{layer or "conv"} input gradient'
  if opcode == 'dot':
    return f'{layer or "dense"} {"gradients" if backward else "forward"}'
  if opcode in ('all-reduce', 'all-reduce-start', 'all-reduce-done', 'reduce-scatter',
                'all-gather'):
    return 'all-reduce (gradients, metrics)'
  return _elementwise(name, info)


def _elementwise(name: str, info: dict) -> str:
  """The row of a pass that is neither a convolution, a dot nor a collective."""
  op_name = info['op_name']
  in_model = '(CNN)' in op_name or 'jvp(' in op_name
  if 'reduce_window' in op_name or 'reduce-window' in name:
    return 'pooling (reduce_window), both directions'
  if name.startswith(('transpose_copy', 'copy', 'bitcast_copy')) or info['opcode'] == 'copy':
    return 'layout copies (transposes)'
  if 'broadcast' in name or (in_model and op_name.endswith('/add')):
    return 'bias add and broadcasts'
  if 'select_n' in op_name or 'max' in op_name.rsplit('/', 1)[-1]:
    return 'ReLU, both directions'
  if in_model and op_name.endswith('reduce_sum'):
    return 'bias gradients (reduce_sum)'
  if not in_model and info['shape'].split('{')[0].count(',') >= 1:
    return 'optimizer update (parameter-sized passes)'
  return 'loss, metrics, the rest'


def trace_events(log_dir: pathlib.Path) -> list[dict]:
  path = next(log_dir.rglob('perfetto_trace.json.gz'))
  with gzip.open(path, 'rt') as f:
    trace = json.load(f)
  events = trace['traceEvents'] if isinstance(trace, dict) else trace
  return [e for e in events if e.get('ph') == 'X' and 'dur' in e]


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split('\n\n', maxsplit=1)[0])
  parser.add_argument('--config', default='default')
  parser.add_argument('--variant', default='', help='`;`-separated config overrides')
  parser.add_argument('--steps', type=int, default=20, help='steps per profile')
  parser.add_argument('--profiles', type=int, default=5,
                      help='profiles taken one after another; each row is their median')
  parser.add_argument('--json', default='')
  parser.add_argument('--instructions', type=int, default=0,
                      help='also print the N slowest HLO instructions and their rows')
  args = parser.parse_args()
  # pylint: disable=import-outside-toplevel  (the CPU devices are split before JAX starts)
  import bench_steps
  from mnist_flax import config as config_lib, configs
  from mnist_flax.training import lowering, sharding
  config = config_lib.apply_overrides(configs.load(args.config, validate=False),
                                      [v for v in args.variant.split(';') if v])
  devices = sharding.planned_cpu_devices(config.get('cpu_devices', 0), config.batch_size)
  chosen = lowering.setup(config, devices)
  sharding.setup_cpu_devices(config.get('cpu_devices', 0), config.batch_size)
  import jax
  v = bench_steps.build(args.config, args.variant)
  bench_steps.run(v, 10)  # warm-up
  start = time.perf_counter()
  bench_steps.run(v, args.steps)
  step_ms = (time.perf_counter() - start) / args.steps * 1e3
  hlo = instructions(v['step'].as_text())
  # Several profiles, each row's median: on 2 cores a profiled op is sometimes descheduled while
  # the other device's op runs, and one profile can double a row.
  profiles = []
  for _ in range(args.profiles):
    with tempfile.TemporaryDirectory() as tmp:
      with jax.profiler.trace(tmp, create_perfetto_trace=True):
        bench_steps.run(v, args.steps)
      profiles.append(trace_events(pathlib.Path(tmp)))
  rows_of = [collections.defaultdict(float) for _ in profiles]
  by_instruction = collections.defaultdict(list)
  for rows, events in zip(rows_of, profiles):
    totals = collections.defaultdict(float)
    for e in events:
      if e['name'] in hlo:
        totals[e['name']] += e['dur']
    for name, us in totals.items():
      rows[classify(name, hlo[name], hlo)] += us
      by_instruction[name].append(us)
  devices = len(jax.devices())
  scale = 1e-3 / args.steps / devices  # microseconds in all -> ms per step and device
  names = {row for rows in rows_of for row in rows}
  table = {row: statistics.median(rows.get(row, 0.0) for rows in rows_of) * scale for row in names}
  table = dict(sorted(table.items(), key=lambda kv: -kv[1]))
  batch = v['config'].batch_size
  print(f'{args.config} {args.variant}: {devices} CPU device(s), lowering {chosen}, batch {batch}, '
        f'{step_ms:.2f} ms/step unprofiled ({batch / step_ms * 1e3:,.0f} images/s); '
        f'{len(by_instruction)} HLO instructions in the trace; median of {args.profiles} profiles '
        f'of {args.steps} steps')
  for row, ms in table.items():
    print(f'  {row:<45} {ms:7.2f} ms/step per device')
  print(f'  {"sum":<45} {sum(table.values()):7.2f}')
  medians = {name: statistics.median(us) for name, us in by_instruction.items()}
  for name, us in sorted(medians.items(), key=lambda kv: -kv[1])[:args.instructions]:
    info = hlo[name]
    print(f'    {us * scale:6.2f} ms  {name:<28} {info["shape"].split("{")[0]:<22} '
          f'{classify(name, info, hlo):<40} {info["op_name"][-50:]}')
  if args.json:
    pathlib.Path(args.json).write_text(json.dumps(
        {'config': args.config, 'variant': args.variant, 'devices': devices, 'lowering': chosen,
         'batch': batch,
         'step_ms': step_ms, 'ops_ms_per_device': table}, indent=1))


if __name__ == '__main__':
  main()
