"""Where PyTorch's step of the reference CNN spends its time, per operation (oneDNN on the CPU).

    $PEER_TORCH_PYTHON experiments/torch_ops.py [--steps 40] [--bf16] [--json out.json]

The PyTorch half of the per-operation table in experiments/SPEED.md; `op_table.py` is the XLA
half. It trains the network of `../shared/peers/torch_refcnn.py` (imported from there, so it is
the very peer the benchmark times: batch 128, channels_last, SGD with momentum, 2 threads) on
random data under `torch.profiler`, and prints milliseconds per step for each ATen operation
(self time). PyTorch runs a convolution's two gradients as one `convolution_backward` call, so
each convolution's input and kernel gradients are also timed alone (`output_mask`), to match
XLA's separate ops. Needs PyTorch (`pip install torch==2.13.0`), not this project.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys
import time

import torch
import torch.nn.functional as F
from torch.profiler import ProfilerActivity, profile

PEERS = pathlib.Path(__file__).resolve().parents[2] / 'shared' / 'peers'


def _peer_cnn():
  sys.path.insert(0, str(PEERS))
  import torch_refcnn  # pylint: disable=import-outside-toplevel,import-error
  return torch_refcnn.CNN


def train_steps(model, optimizer, x, y, steps: int, bf16: bool) -> None:
  for _ in range(steps):
    with torch.autocast('cpu', dtype=torch.bfloat16, enabled=bf16):
      loss = F.cross_entropy(model(x), y)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()


def step_profile(args) -> tuple[float, dict[str, float]]:
  """(ms per step unprofiled, {ATen op: self ms per step}) of the peer's training step."""
  torch.manual_seed(0)
  model = _peer_cnn()().to(memory_format=torch.channels_last)
  optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
  x = torch.randn(128, 1, 28, 28).contiguous(memory_format=torch.channels_last)
  y = torch.randint(0, 10, (128,))
  train_steps(model, optimizer, x, y, 10, args.bf16)  # warm-up: oneDNN primitives get created
  start = time.perf_counter()
  train_steps(model, optimizer, x, y, args.steps, args.bf16)
  step_ms = (time.perf_counter() - start) / args.steps * 1e3
  with profile(activities=[ProfilerActivity.CPU]) as prof:
    train_steps(model, optimizer, x, y, args.steps, args.bf16)
  ops = {e.key: e.self_cpu_time_total / 1e3 / args.steps for e in prof.key_averages()
         if e.self_cpu_time_total > 0}
  return step_ms, dict(sorted(ops.items(), key=lambda kv: -kv[1]))


def _ms(fn, repeats: int) -> float:
  for _ in range(3):
    fn()
  start = time.perf_counter()
  for _ in range(repeats):
    fn()
  return (time.perf_counter() - start) / repeats * 1e3


def conv_gradients(args) -> dict[str, float]:
  """Each convolution's forward, input gradient and kernel (+ bias) gradient, timed alone."""
  dtype = torch.bfloat16 if args.bf16 else torch.float32
  out = {}
  for name, (size, cin, cout) in {'conv1': (28, 1, 32), 'conv2': (14, 32, 64)}.items():
    x = torch.randn(128, cin, size, size, dtype=dtype).contiguous(
        memory_format=torch.channels_last)
    w = torch.randn(cout, cin, 3, 3, dtype=dtype).contiguous(memory_format=torch.channels_last)
    g = torch.randn(128, cout, size, size, dtype=dtype).contiguous(
        memory_format=torch.channels_last)

    def backward(mask, x=x, w=w, g=g, cout=cout):
      return torch.ops.aten.convolution_backward(g, x, w, [cout], [1, 1], [1, 1], [1, 1], False,
                                                 [0, 0], 1, mask)
    with torch.no_grad():
      out[f'{name} forward'] = _ms(lambda x=x, w=w: F.conv2d(x, w, padding=1), args.repeats)
      out[f'{name} input gradient'] = _ms(lambda: backward([True, False, False]), args.repeats)
      out[f'{name} kernel gradient'] = _ms(lambda: backward([False, True, True]), args.repeats)
  return out


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split('\n\n', maxsplit=1)[0])
  parser.add_argument('--steps', type=int, default=40)
  parser.add_argument('--repeats', type=int, default=40)
  parser.add_argument('--threads', type=int, default=2)
  parser.add_argument('--bf16', action='store_true', help='autocast to bfloat16')
  parser.add_argument('--json', default='')
  args = parser.parse_args()
  torch.set_num_threads(args.threads)
  step_ms, ops = step_profile(args)
  convs = conv_gradients(args)
  print(f'torch {torch.__version__}, {torch.get_num_threads()} threads, '
        f'{"bf16 autocast" if args.bf16 else "fp32"}, cpu capability '
        f'{torch.backends.cpu.get_cpu_capability()}')
  print(f'step: {step_ms:.2f} ms ({128 / step_ms * 1e3:,.0f} images/s); profiled self time '
        f'{sum(ops.values()):.2f} ms/step')
  for op, ms in ops.items():
    if ms >= 0.05:
      print(f'  {op:<45} {ms:7.2f} ms/step')
  print('convolutions alone (batch 128):')
  for op, ms in convs.items():
    print(f'  {op:<45} {ms:7.2f} ms')
  if args.json:
    pathlib.Path(args.json).write_text(json.dumps(
        {'bf16': args.bf16, 'step_ms': step_ms, 'ops_ms': ops, 'convs_ms': convs}, indent=1))


if __name__ == '__main__':
  main()
