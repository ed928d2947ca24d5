"""On-device data augmentation: random affine warps (translation, rotation, scale, shear) and
optional elastic distortion, jitted and seeded.

Everything here is a pure function of (key, images, strengths), so it runs inside the jitted
`train_step` on the already-sharded batch, with the key derived from `fold_in(seed, step)`: the
same seed gives the same augmented batches, and a resumed run sees exactly what an uninterrupted
one would have. Images are float (N, 28, 28, 1) in [0, 1]; outputs have the same shape and range.

Each image is resampled once (bilinear, zero outside the frame) at coordinates that compose the
affine map and the elastic displacement, so stacking the two costs no extra blur. The strengths
come from `config.augment` (see mnist_flax/configs/default.py); all zero means no-op (the batch
is returned untouched and nothing is compiled for it).
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp


@dataclasses.dataclass(frozen=True)
class AugmentSpec:
  """Maximum strengths; each image draws its own values uniformly within them."""
  translate: float = 0.0  # pixels, per axis: shift in [-t, t]
  rotate: float = 0.0  # degrees: angle in [-r, r]
  scale: float = 0.0  # relative: zoom factor in [1 - s, 1 + s]
  shear: float = 0.0  # degrees: shear angle in [-h, h]
  elastic_alpha: float = 0.0  # pixels: elastic displacement strength (0 = off)
  elastic_sigma: float = 4.0  # pixels: Gaussian smoothness of the elastic field

  @property
  def enabled(self) -> bool:
    return any(v > 0 for v in (self.translate, self.rotate, self.scale, self.shear,
                               self.elastic_alpha))

  @classmethod
  def from_config(cls, section) -> 'AugmentSpec':
    """From a `config.augment` section (None or missing: no augmentation)."""
    if not section:
      return cls()
    fields = {f.name for f in dataclasses.fields(cls)}
    return cls(**{k: float(v) for k, v in dict(section).items() if k in fields})


def _affine_matrices(key, n: int, spec: AugmentSpec):
  """(n, 2, 2) linear parts and (n, 2) translations of the forward (image -> output) maps."""
  k_rot, k_scale, k_shear, k_shift = jax.random.split(key, 4)
  angle = jnp.deg2rad(spec.rotate) * jax.random.uniform(k_rot, (n,), minval=-1.0, maxval=1.0)
  zoom = 1.0 + spec.scale * jax.random.uniform(k_scale, (n,), minval=-1.0, maxval=1.0)
  shear = jnp.tan(jnp.deg2rad(spec.shear)
                  * jax.random.uniform(k_shear, (n,), minval=-1.0, maxval=1.0))
  shift = spec.translate * jax.random.uniform(k_shift, (n, 2), minval=-1.0, maxval=1.0)
  cos, sin = jnp.cos(angle), jnp.sin(angle)
  one, zero = jnp.ones_like(angle), jnp.zeros_like(angle)
  rotation = jnp.stack([jnp.stack([cos, -sin], -1), jnp.stack([sin, cos], -1)], -2)
  shearing = jnp.stack([jnp.stack([one, shear], -1), jnp.stack([zero, one], -1)], -2)
  linear = rotation @ shearing * zoom[:, None, None]
  return linear, shift


def gaussian_matrix(size: int, sigma: float) -> jax.Array:
  """(size, size) matrix K such that K @ f smooths f along its first axis (zero padding)."""
  pos = jnp.arange(size, dtype=jnp.float32)
  weights = jnp.exp(-0.5 * ((pos[:, None] - pos[None, :]) / sigma) ** 2)
  return weights / (sigma * math.sqrt(2 * math.pi))


def _elastic_field(key, n: int, height: int, width: int, spec: AugmentSpec):
  """(n, 2, H, W) smooth random displacements (Simard et al. 2003), in pixels."""
  noise = jax.random.uniform(key, (n, 2, height, width), minval=-1.0, maxval=1.0)
  k_h, k_w = gaussian_matrix(height, spec.elastic_sigma), gaussian_matrix(width, spec.elastic_sigma)
  smooth = jnp.einsum('ij,ncjk,lk->ncil', k_h, noise, k_w)  # separable Gaussian blur
  return spec.elastic_alpha * smooth


def _bilinear(image, rows, cols):
  """Samples a (H, W) image at float coordinates; zero outside the frame."""
  return jax.scipy.ndimage.map_coordinates(image, [rows, cols], order=1, mode='constant', cval=0.0)


def augment_batch(key, images, spec: AugmentSpec):
  """Randomly warps each image of a float batch (N, H, W, C); same key -> same batch."""
  if not spec.enabled:
    return images
  n, height, width, channels = images.shape
  k_affine, k_elastic = jax.random.split(key)
  linear, shift = _affine_matrices(k_affine, n, spec)
  # Output pixel p shows input pixel A^-1 (p - c - t) + c: invert the forward map per image.
  inverse = jnp.linalg.inv(linear)
  center = jnp.array([(height - 1) / 2, (width - 1) / 2], jnp.float32)
  grid = jnp.stack(jnp.meshgrid(jnp.arange(height, dtype=jnp.float32),
                                jnp.arange(width, dtype=jnp.float32), indexing='ij'))  # (2, H, W)
  rel = grid[None] - center[None, :, None, None] - shift[:, :, None, None]
  coords = jnp.einsum('nij,njhw->nihw', inverse, rel) + center[None, :, None, None]
  if spec.elastic_alpha > 0:
    coords = coords + _elastic_field(k_elastic, n, height, width, spec)

  def warp_one(image, coord):  # image (H, W, C), coord (2, H, W)
    return jax.vmap(lambda ch: _bilinear(ch, coord[0], coord[1]), in_axes=-1, out_axes=-1)(image)

  out = jax.vmap(warp_one)(images.astype(jnp.float32), coords)
  return jnp.clip(out, 0.0, 1.0).astype(images.dtype)


def shift_images(images, d_row: float, d_col: float, rotate: float = 0.0):
  """A fixed (non-random) shift and rotation of every image: the building block of TTA views."""
  n, height, width, _ = images.shape
  angle = math.radians(rotate)
  linear = jnp.array([[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]],
                     jnp.float32)
  center = jnp.array([(height - 1) / 2, (width - 1) / 2], jnp.float32)
  grid = jnp.stack(jnp.meshgrid(jnp.arange(height, dtype=jnp.float32),
                                jnp.arange(width, dtype=jnp.float32), indexing='ij'))
  rel = grid - center[:, None, None] - jnp.array([d_row, d_col], jnp.float32)[:, None, None]
  coords = jnp.einsum('ij,jhw->ihw', linear.T, rel) + center[:, None, None]  # R^-1 = R^T
  warp = lambda image: jax.vmap(  # noqa: E731
      lambda ch: _bilinear(ch, coords[0], coords[1]), in_axes=-1, out_axes=-1)(image)
  return jnp.clip(jax.vmap(warp)(images.astype(jnp.float32)), 0.0, 1.0)
