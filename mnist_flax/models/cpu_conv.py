"""A drop-in `lax.conv_general_dilated` that runs small-image CNNs faster on XLA's CPU backend.

Pass it to `flax.linen.Conv(..., conv_general_dilated=conv_for_backend())`: parameters, shapes
and results are the same as with the plain convolution (up to float rounding), only the way XLA
CPU computes it changes. Two rewrites, each measured on this project's 2-core Xeon (forward +
both gradients, 64 images, JAX 0.10.2; `experiments/SPEED.md`):

* **Batch chunks that fit the cache.** XLA CPU lowers a convolution to an im2col-style matrix
  product whose patch buffer grows with the batch; past ~10 MiB it falls out of cache and the
  rate drops ~3x (3x3, 32 -> 32 channels at 26x26: 71 ms for 64 images in one piece, 23 ms in
  four pieces of 16). The batch is split into the largest even pieces whose patch buffer stays
  under `CHUNK_BYTES`, computed one after another and concatenated.
* **Space-to-depth for stride-2 convolutions on small images.** The input gradient of a strided
  convolution is a transposed convolution that XLA CPU runs very slowly at small spatial sizes
  (5x5 stride 2, 64 -> 64 channels at 8x8: 41 ms against 1.4 ms forward). That gradient is taken
  instead through the same convolution written as a stride-1 one over 2x2 pixel blocks (4x the
  channels, the kernel zero-padded to even size and regrouped the same way): 6 ms. The forward
  pass and the kernel gradient stay plain (faster that way), through a `jax.custom_vjp`. On larger
  images the plain form is faster throughout, so this applies up to `S2D_MAX_SIZE` pixels a side.

On GPUs and TPUs `conv_for_backend()` returns the plain `lax.conv_general_dilated`.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax import lax

CHUNK_BYTES = 12 << 20  # patch buffer per piece: ~10 MiB was the knee on the 2-core Xeon
MAX_PIECES = 32
S2D_MAX_SIZE = 8  # space-to-depth for stride-2 inputs up to 8x8 (12x12 was faster plain)
_NHWC = ('NHWC', 'HWIO', 'NHWC')


def conv_for_backend(backend: str | None = None):
  """The convolution to use on `backend` (default: JAX's default backend)."""
  return cpu_conv if (backend or jax.default_backend()) == 'cpu' else lax.conv_general_dilated


def _space_to_depth_conv(lhs, rhs, pads, precision, preferred_element_type):
  """A stride-2 NHWC/HWIO convolution with explicit `pads`, as a stride-1 one on 2x2 blocks.

  Output pixel i reads padded input rows 2i .. 2i+k-1. With the kernel zero-padded to an even
  size K, row 2i + 2b + r is row r of block i + b, so the output is a stride-1 VALID
  convolution over blocks with kernel[b, r] = padded_kernel[2b + r] (the same for columns).
  """
  n, h, w, c = lhs.shape
  kh, kw, cin, cout = rhs.shape
  (top, bottom), (left, right) = pads
  out_h, out_w = (h + top + bottom - kh) // 2 + 1, (w + left + right - kw) // 2 + 1
  even_kh, even_kw = kh + kh % 2, kw + kw % 2
  # Padded input: at least what the original padding gives, enough rows for the even kernel,
  # and an even number of rows and columns (extra zeros only meet the kernel's zero padding or
  # produce outputs beyond out_h/out_w, which are sliced off).
  ph = max(h + top + bottom, 2 * (out_h - 1) + even_kh)
  pw = max(w + left + right, 2 * (out_w - 1) + even_kw)
  ph, pw = ph + ph % 2, pw + pw % 2
  x = jnp.pad(lhs, ((0, 0), (top, ph - h - top), (left, pw - w - left), (0, 0)))
  x = x.reshape(n, ph // 2, 2, pw // 2, 2, c).transpose(0, 1, 3, 2, 4, 5)
  x = x.reshape(n, ph // 2, pw // 2, 4 * c)
  k = jnp.pad(rhs, ((0, even_kh - kh), (0, even_kw - kw), (0, 0), (0, 0)))
  k = k.reshape(even_kh // 2, 2, even_kw // 2, 2, cin, cout).transpose(0, 2, 1, 3, 4, 5)
  k = k.reshape(even_kh // 2, even_kw // 2, 4 * cin, cout)
  y = lax.conv_general_dilated(x, k, (1, 1), 'VALID', dimension_numbers=_NHWC,
                               precision=precision, preferred_element_type=preferred_element_type)
  return y[:, :out_h, :out_w]


def _plain_nhwc(lhs, rhs, strides, pads, precision, preferred_element_type):
  return lax.conv_general_dilated(lhs, rhs, strides, pads, dimension_numbers=_NHWC,
                                  precision=precision,
                                  preferred_element_type=preferred_element_type)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4))
def _strided_conv(lhs, rhs, pads, precision, preferred_element_type):
  """Stride-2 convolution: plain forward and kernel gradient, space-to-depth input gradient."""
  return _plain_nhwc(lhs, rhs, (2, 2), pads, precision, preferred_element_type)


def _strided_conv_fwd(lhs, rhs, pads, precision, preferred_element_type):
  return _strided_conv(lhs, rhs, pads, precision, preferred_element_type), (lhs, rhs)


def _strided_conv_bwd(pads, precision, preferred_element_type, residuals, grad):
  lhs, rhs = residuals
  _, input_vjp = jax.vjp(
      lambda x: _space_to_depth_conv(x, rhs, pads, precision, preferred_element_type), lhs)
  _, kernel_vjp = jax.vjp(
      lambda k: _plain_nhwc(lhs, k, (2, 2), pads, precision, preferred_element_type), rhs)
  return input_vjp(grad)[0], kernel_vjp(grad)[0]


_strided_conv.defvjp(_strided_conv_fwd, _strided_conv_bwd)


def cpu_conv(lhs, rhs, window_strides, padding, lhs_dilation=None, rhs_dilation=None,
             dimension_numbers=None, feature_group_count=1, batch_group_count=1,
             precision=None, preferred_element_type=None, out_sharding=None):
  """`lax.conv_general_dilated` with the two CPU rewrites above where they apply.

  `out_sharding` (passed by flax.nnx.Conv, None unless the user shards the output) is only
  handed on when set; a set one takes the plain convolution.
  """
  def plain(x):
    sharding = {} if out_sharding is None else {'out_sharding': out_sharding}
    return lax.conv_general_dilated(
        x, rhs, window_strides, padding, lhs_dilation, rhs_dilation, dimension_numbers,
        feature_group_count, batch_group_count, precision=precision,
        preferred_element_type=preferred_element_type, **sharding)

  simple = (out_sharding is None and lhs.ndim == 4
            and feature_group_count == 1 and batch_group_count == 1
            and all(d == 1 for d in (lhs_dilation or (1, 1)))
            and all(d == 1 for d in (rhs_dilation or (1, 1)))
            and lax.conv_dimension_numbers(lhs.shape, rhs.shape, dimension_numbers)
            == lax.conv_dimension_numbers(lhs.shape, rhs.shape, _NHWC))
  if not simple:
    return plain(lhs)
  n, h, w, _ = lhs.shape
  kh, kw, cin, _ = rhs.shape
  strides = tuple(window_strides)
  if isinstance(padding, str):
    padding = lax.padtype_to_pads((h, w), (kh, kw), strides, padding)
  pads = tuple((int(lo), int(hi)) for lo, hi in padding)  # hashable: a custom_vjp static arg
  s2d = strides == (2, 2) and max(h, w) <= S2D_MAX_SIZE

  def conv(x):
    if s2d:
      return _strided_conv(x, rhs, pads, precision, preferred_element_type)
    return plain(x)
  out_h = (h + sum(pads[0]) - kh) // strides[0] + 1
  out_w = (w + sum(pads[1]) - kw) // strides[1] + 1
  per_image = out_h * out_w * kh * kw * cin * jnp.dtype(lhs.dtype).itemsize
  chunk = n
  while chunk > 1 and chunk * per_image > CHUNK_BYTES:
    chunk = next(d for d in range(chunk - 1, 0, -1) if n % d == 0)
  if chunk == n or n // chunk > MAX_PIECES:  # e.g. a prime batch: not worth unrolling
    return conv(lhs)
  return jnp.concatenate([conv(lhs[i:i + chunk]) for i in range(0, n, chunk)])
