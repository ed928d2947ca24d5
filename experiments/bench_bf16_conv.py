"""One convolution's forward + both gradients four ways: XLA's convolution in float32 and in
bfloat16, and the same convolution as a patch matmul (im2col, then one `dot`) in float32 and in
bfloat16 with float32 accumulation (experiments/SPEED.md, "Round three").

    python experiments/bench_bf16_conv.py [--batch 64] [--rounds 5]

The variants are timed in interleaved rounds in one process (median of the rounds), so load from
other processes hits each alike. The batch is per XLA device (batch 128 over 2 CPU devices).
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

# (name, input size, in channels, out channels): 3x3 SAME convolutions of the shipped networks.
LAYERS = [('cnn conv 2 (14x14, 32->64)', 14, 32, 64),
          ('blockcnn conv 1 (12x12, 4->32)', 12, 4, 32),
          ('blockcnn conv 2 (6x6, 32->64)', 6, 32, 64)]
DN = ('NHWC', 'HWIO', 'NHWC')


def conv(x, w, dtype):
  return lax.conv_general_dilated(x.astype(dtype), w.astype(dtype), (1, 1), 'SAME',
                                  dimension_numbers=DN,
                                  preferred_element_type=jnp.float32)


def patch_matmul(x, w, dtype):
  """The convolution as im2col + one matmul: (N*H*W, 9*Cin) @ (9*Cin, Cout). The patches are 9
  shifted slices of the padded input (whose gradient is a pad and an add;
  `lax.conv_general_dilated_patches` differentiates as a convolution, 10-20x slower here)."""
  n, h, wd, cin = x.shape
  padded = jnp.pad(x.astype(dtype), ((0, 0), (1, 1), (1, 1), (0, 0)))
  patches = jnp.concatenate([padded[:, i:i + h, j:j + wd] for i in range(3) for j in range(3)],
                            axis=-1)  # (kh, kw, cin) order, as w.reshape(9 * cin, cout)
  out = jnp.dot(patches.reshape(n * h * wd, 9 * cin), w.reshape(9 * cin, -1).astype(dtype),
                preferred_element_type=jnp.float32)
  return out.reshape(n, h, wd, -1)


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  parser.add_argument('--batch', type=int, default=64)
  parser.add_argument('--rounds', type=int, default=5)
  parser.add_argument('--repeats', type=int, default=20)
  args = parser.parse_args()
  rng = np.random.default_rng(0)
  variants = [('conv f32', conv, jnp.float32), ('conv bf16', conv, jnp.bfloat16),
              ('patch mm f32', patch_matmul, jnp.float32),
              ('patch mm bf16', patch_matmul, jnp.bfloat16)]
  print(f'{jax.devices()[0].device_kind}, batch {args.batch}, XLA_FLAGS='
        f'{os.environ.get("XLA_FLAGS", "")!r}; ms per forward + both gradients, median of '
        f'{args.rounds} rounds')
  print(f'{"layer":<32}' + ''.join(f'{name:>15}' for name, _, _ in variants))
  for name, size, cin, cout in LAYERS:
    x = jnp.asarray(rng.random((args.batch, size, size, cin)), jnp.float32)
    w = jnp.asarray(rng.standard_normal((3, 3, cin, cout)) * 0.1, jnp.float32)
    ref = patch_matmul(x, w, jnp.float32)
    np.testing.assert_allclose(conv(x, w, jnp.float32), ref, rtol=1e-4, atol=1e-4)
    fns = [jax.jit(jax.grad(lambda x, w, f=f, d=d: jnp.sum(f(x, w, d) ** 2), argnums=(0, 1)))
           for _, f, d in variants]
    times = [[] for _ in fns]
    for fn in fns:
      jax.block_until_ready(fn(x, w))
    for _ in range(args.rounds):
      for fn, t in zip(fns, times):
        start = time.perf_counter()
        for _ in range(args.repeats):
          out = fn(x, w)
        jax.block_until_ready(out)
        t.append((time.perf_counter() - start) / args.repeats * 1e3)
    print(f'{name:<32}' + ''.join(f'{statistics.median(t):15.3f}' for t in times))
  print(f'load average {os.getloadavg()[0]:.1f}')


if __name__ == '__main__':
  main()
