"""Per-layer timing of ConvBN's convolutions: plain `lax.conv_general_dilated` against
`mnist_flax.models.cpu_conv.cpu_conv`, forward and forward + both gradients (experiments/SPEED.md).

    python experiments/bench_conv.py [--batch 64] [--repeats 20]

Run it alone on the machine (timings are noisy). The batch is per XLA device: `mnist-flax train`
splits batch 128 over the 2 CPU devices, so each convolution sees 64 images.
"""

from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from mnist_flax.models.cpu_conv import cpu_conv

# ConvBN at its default widths: (input size, in channels, out channels, kernel, stride, padding)
LAYERS = [(28, 1, 32, 3, 1, 'VALID'), (26, 32, 32, 3, 1, 'VALID'), (24, 32, 32, 5, 2, 'SAME'),
          (12, 32, 64, 3, 1, 'VALID'), (10, 64, 64, 3, 1, 'VALID'), (8, 64, 64, 5, 2, 'SAME')]


def _ms(fn, args, repeats):
  jax.block_until_ready(fn(*args))  # compile and warm up
  start = time.perf_counter()
  for _ in range(repeats):
    out = fn(*args)
  jax.block_until_ready(out)
  return (time.perf_counter() - start) / repeats * 1e3


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  parser.add_argument('--batch', type=int, default=64)
  parser.add_argument('--repeats', type=int, default=20)
  args = parser.parse_args()
  rng = np.random.default_rng(0)
  print(f'{jax.devices()[0].device_kind}, batch {args.batch}, ms per call (mean of {args.repeats})')
  print(f'{"layer":<26} {"plain fwd":>10} {"cpu fwd":>10} {"plain f+b":>10} {"cpu f+b":>10}')
  totals = np.zeros(4)
  for size, cin, cout, kernel, stride, padding in LAYERS:
    x = jnp.asarray(rng.random((args.batch, size, size, cin)), jnp.float32)
    w = jnp.asarray(rng.standard_normal((kernel, kernel, cin, cout)) * 0.1, jnp.float32)
    dn = lax.conv_dimension_numbers(x.shape, w.shape, ('NHWC', 'HWIO', 'NHWC'))
    row = []
    for part in ('fwd', 'grad'):
      for conv in (lax.conv_general_dilated, cpu_conv):
        def f(x, w, conv=conv):
          return conv(x, w, (stride, stride), padding, dimension_numbers=dn)
        fn = jax.jit(f) if part == 'fwd' else jax.jit(
            jax.grad(lambda x, w, f=f: jnp.sum(f(x, w) ** 2), argnums=(0, 1)))
        row.append(_ms(fn, (x, w), args.repeats))
    totals += row
    name = f'{size}x{size} {cin}->{cout} {kernel}x{kernel} s{stride}'
    print(f'{name:<26} ' + ' '.join(f'{v:10.2f}' for v in row))
  print(f'{"all six":<26} ' + ' '.join(f'{v:10.2f}' for v in totals))


if __name__ == '__main__':
  main()
