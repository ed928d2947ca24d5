"""MNIST-style preprocessing: any digit image -> the 28x28 uint8 image the model expects.

MNIST was made by scaling each (binary) NIST digit to fit a 20x20 box, preserving its aspect
ratio, with anti-aliasing, then placing it in a 28x28 field so that its centre of mass sits at the
centre: white ink on black, grey levels only at the stroke edges. `preprocess` repeats those steps
on an arbitrary image (a file path, a numpy array or a PIL image):

1. decode to grey levels in [0, 1]: any size and mode (RGB, RGBA or palette over transparency,
   16-bit, grayscale, binary), EXIF rotation applied, large photos reduced while decoding;
2. polarity: whichever of dark or light deviates more from the border's median is the ink;
   dark-on-light input is inverted;
3. background: a smooth quadratic surface fitted to the non-ink pixels (uneven lighting) is
   subtracted; the noise level of what remains sets a threshold, so photo noise and JPEG
   artefacts go to zero and the stroke contrast is stretched to full white. A digit that fills
   the frame (a thumbnail or low-resolution scan: ink to the edges, no paper margin) leaves too
   little paper for that: its paper is the low end of its grey range, under a plane, and its
   noise is measured between neighbouring pixels;
4. crop to the ink's bounding box (specks removed for large images), scale the digit to fit
   20x20 (hairline pen strokes thickened to MNIST's weight), place it in 28x28 centred by its
   centre of mass.

An image that already is MNIST-like passes through essentially unchanged (the same pixels, up to
a grey level or two of contrast stretch). Other data sets prepare images their own way:
`prepare(source, spec)` follows the data set's `spec.prepare` (these steps for handwriting,
`fit_on_black` for Fashion-MNIST's object photos, `resize`, or the data set's own function).
Only numpy and Pillow: no TensorFlow, no SciPy, so the `predict` command starts fast.
"""

from __future__ import annotations

import io
import os
import pathlib
import warnings
from typing import Any, Union

import numpy as np
from PIL import Image, ImageFilter, ImageOps, UnidentifiedImageError

from mnist_flax.errors import ImageError, ImageTooLargeError, NoDigitError

MNIST_SIZE = 28
DIGIT_BOX = 20  # MNIST digits fit a 20x20 box inside the 28x28 field
MNIST_CENTRE = 14.0  # centre of mass of MNIST test digits, in pixel indices (measured: 13.99, 14.01)
# Inputs larger than this are refused before decoding (a "decompression bomb" is a small file that
# decodes to gigabytes); a 48-megapixel phone photo still passes.
MAX_PIXELS = 50_000_000
WORK_SIZE = 512  # larger images are reduced to this long side first: plenty for one digit
# A digit spanning less than ZOOM_FRACTION of the reduced image (small in a large frame) is
# looked at again in a crop of the image reduced only to ZOOM_SIZE: its strokes keep their pixels.
ZOOM_SIZE, ZOOM_FRACTION = 2048, 0.25
FIT_SIZE = 64  # the background surface is fitted on an image reduced to at most this size
MIN_INK_CONTRAST = 0.1  # ink must stand out from the background by 10% of the full grey range,
MIN_FAINT_CONTRAST = 0.03  # or by 3% and 3 noise levels (a faint digit in a noisy frame)
MIN_INK_PIXELS = 6  # fewer coherent ink pixels than this: no digit
NOISE_SIGMAS = 5.0  # the smoothed image's ink stands this many of its noise levels above paper
# Strokes thinner than this at the 20x20 scale (pixels) are thickened. MNIST's own: median 1.8,
# 99.9% above 0.85 (by the same 2 x area / perimeter estimate), so MNIST-like inputs are untouched.
THIN_STROKE = 0.8
# A digit that fills the frame (a thumbnail, a low-resolution scan, a tight crop: ink to the
# edges, no paper margin) breaks what the statistics above assume, that most of the frame is
# paper: its ink covers at least FILLED_SHARE of the frame and spans FILLED_SPAN of its height or
# width (a digit photographed or drawn with a margin spans under 0.85 and has far less ink).
FILLED_SHARE, FILLED_SPAN = 0.15, 0.85
# ... and the frame's grey levels must be a picture, not noise or lighting: neighbouring pixels
# correlate by FILLED_CORRELATION (white noise: 0; strokes, even at 8x8 enlarged twice: over 0.5)
# and a smooth quadratic surface leaves FILLED_UNEXPLAINED of their spread unexplained.
FILLED_CORRELATION, FILLED_UNEXPLAINED = 0.5, 0.3
POLARITY_TIE = 0.3  # ink and paper sides this close to a tie: their pieces decide (`ink_sides`)
PAPER_BAND = 0.25  # in a filled frame, the paper: the lowest quarter of the ink's grey range
SPECK_FILTER_MIN_SIZE = 56  # above this, isolated noise specks are removed before the bounding box

DRAFTED = 'mnist_flax_drafted'  # set in a decoded image's info: decoded at a reduced size

ImageLike = Union[str, os.PathLike, bytes, np.ndarray, Image.Image]


def describe(source: Any) -> str:
  """A short name for an input in error messages: its path, or its kind and shape."""
  if isinstance(source, (str, os.PathLike)):
    return str(source)
  if isinstance(source, np.ndarray):
    return f'array{tuple(source.shape)}'
  if isinstance(source, (bytes, bytearray, memoryview)):
    return f'{len(source)} bytes'
  if isinstance(source, Image.Image):
    return getattr(source, 'filename', '') or f'PIL image {source.size[0]}x{source.size[1]}'
  return type(source).__name__


# ---------------------------------------------------------------------------- decoding


def _check_size(width: int, height: int, name: str):
  if width * height > MAX_PIXELS:
    raise ImageTooLargeError(
        f'{name}: image too large: {width}x{height} = {width * height / 1e6:.0f} megapixels, '
        f'more than the limit of {MAX_PIXELS / 1e6:.0f} (a decompression bomb?); resize it first')
  if width < 1 or height < 1:
    raise ImageError(f'{name}: image has no pixels ({width}x{height})')


def open_image(path: str | os.PathLike, size: int = WORK_SIZE) -> Image.Image:
  """Opens and fully decodes an image file, with one ImageError for every way that can fail."""
  name = str(path)
  path = pathlib.Path(path)
  if not path.exists():
    raise ImageError(f'{name}: no such file')
  if path.is_dir():
    raise ImageError(f'{name}: is a directory, not an image file')
  return _decode(path, name, size)


def decode_image(data: bytes, name: str = 'image bytes', size: int = WORK_SIZE) -> Image.Image:
  """Decodes an encoded image held in memory (an upload), with the checks of `open_image`."""
  if not data:
    raise ImageError(f'{name}: empty (0 bytes), not an image')
  return _decode(io.BytesIO(bytes(data)), name, size)


def _decode(source, name: str, size: int) -> Image.Image:
  try:
    with warnings.catch_warnings():
      # Pillow warns (then errors) above its own pixel limit; we check ours first, below.
      warnings.simplefilter('error', Image.DecompressionBombWarning)
      image = Image.open(source)
      _check_size(*image.size, name)
      # JPEG only: decode at a reduced scale (1/2 .. 1/8), still at least `size` per side.
      original = image.size
      image.draft(image.mode, (size, size))
      image.load()
      image.info[DRAFTED] = image.size != original
  except ImageError:
    raise
  except UnidentifiedImageError:
    raise ImageError(f'{name}: not an image file (or a format Pillow cannot read)') from None
  except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
    raise ImageTooLargeError(f'{name}: image too large: more than the limit of '
                             f'{MAX_PIXELS / 1e6:.0f} megapixels (a decompression bomb?); '
                             f'Pillow says: {e}') from None
  except (OSError, SyntaxError, ValueError, EOFError) as e:  # truncated or corrupt data
    raise ImageError(f'{name}: cannot decode image: {e}') from None
  return image


def _luminance(rgb: np.ndarray) -> np.ndarray:
  return rgb[..., :3].astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32)


def _composite_alpha(grey: np.ndarray, alpha: np.ndarray) -> np.ndarray:
  """Flattens transparency: drawing apps leave the paper transparent and only the ink opaque.

  Paper of the opposite tone to the (opaque) ink is put behind, so dark ink on transparency and
  light ink on transparency both become ink on paper.
  """
  if alpha.min() > 0.98:
    return grey
  weight = alpha.sum()
  ink_tone = float((grey * alpha).sum() / weight) if weight > 0 else 0.0
  paper = 1.0 if ink_tone < 0.5 else 0.0
  return grey * alpha + paper * (1.0 - alpha)


def _pil_to_grey(image: Image.Image) -> np.ndarray:
  """Any Pillow mode -> float32 grey levels in [0, 1] (transparency composited)."""
  image = ImageOps.exif_transpose(image) or image
  mode = image.mode
  if mode in ('I;16', 'I;16L', 'I;16B', 'I;16N', 'I', 'F'):
    values = np.asarray(image, dtype=np.float32)
    top = 1.0 if mode == 'F' and values.max() <= 1.0 else 255.0
    if values.max() > 255.0 or mode.startswith('I;16'):
      top = 65535.0
    return np.clip(values / top, 0.0, 1.0)
  has_alpha = mode in ('RGBA', 'LA', 'PA', 'RGBa', 'La') or (
      mode == 'P' and 'transparency' in image.info)
  if has_alpha and not (mode == 'RGBA' and image.getchannel('A').getextrema()[0] == 255):
    rgba = np.asarray(image.convert('RGBA'), dtype=np.float32) / 255.0
    return _composite_alpha(_luminance(rgba), rgba[..., 3])
  return np.asarray(image.convert('L'), dtype=np.float32) / 255.0


def _array_to_grey(array: np.ndarray, name: str) -> np.ndarray:
  """(H, W), (H, W, 1|3|4) arrays of uint8, uint16, bool or float -> float32 grey in [0, 1]."""
  array = np.asarray(array)
  if array.ndim == 3 and array.shape[-1] == 1:
    array = array[..., 0]
  if array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[-1] not in (3, 4)):
    raise ImageError(f'{name}: expected an image array of shape (H, W), (H, W, 1), (H, W, 3) or '
                     f'(H, W, 4), got {array.shape}')
  _check_size(array.shape[1], array.shape[0], name)
  if array.dtype == np.bool_:
    values = array.astype(np.float32)
  elif array.dtype == np.uint8:
    values = array.astype(np.float32) / 255.0
  elif array.dtype == np.uint16:
    values = array.astype(np.float32) / 65535.0
  elif np.issubdtype(array.dtype, np.number):
    values = array.astype(np.float32)
    if not np.all(np.isfinite(values)):
      raise ImageError(f'{name}: image array holds NaN or infinite values')
    if values.max() > 1.0:  # integers or floats on the 0..255 scale
      values = values / 255.0
    values = np.clip(values, 0.0, 1.0)
  else:
    raise ImageError(f'{name}: unsupported image array dtype {array.dtype}')
  if values.ndim == 2:
    return values
  grey = _luminance(values)
  return _composite_alpha(grey, values[..., 3]) if values.shape[-1] == 4 else grey


def _reduce(grey: np.ndarray, size: int) -> np.ndarray:
  """Area-averages `grey` so that its long side is at most `size` (no-op when already small)."""
  h, w = grey.shape
  scale = size / max(h, w)
  if scale >= 1.0:
    return grey
  new = (max(1, round(w * scale)), max(1, round(h * scale)))
  return np.asarray(Image.fromarray(grey, 'F').resize(new, Image.Resampling.BOX))


def _enlarge(grey: np.ndarray) -> np.ndarray:
  """An image smaller than MNIST's 28 pixels (an 8x8 or 16x16 scan) enlarged by a whole factor to
  at least that, bicubic: its strokes then span several pixels each, as the statistics expect."""
  h, w = grey.shape
  factor = -(-MNIST_SIZE // max(h, w))
  if factor <= 1:
    return grey
  big = Image.fromarray(grey, 'F').resize((w * factor, h * factor), Image.Resampling.BICUBIC)
  return np.clip(np.asarray(big), 0.0, 1.0)


def load_grey(source: ImageLike, name: str | None = None, size: int = WORK_SIZE) -> np.ndarray:
  """An image file, encoded image bytes, array or PIL image -> float32 (H, W) grey levels in
  [0, 1], long side <= `size`. `name` (default: `describe(source)`) starts every error message."""
  return _reduce(_decoded_grey(source, name or describe(source), size)[0], size)


def _decoded_grey(source: ImageLike, name: str, size: int) -> tuple[np.ndarray, bool]:
  """(grey levels as decoded, not yet reduced; whether decoding already reduced them, as JPEG's
  draft mode does: then more detail needs another decode)."""
  drafted = False
  if isinstance(source, (str, os.PathLike, bytes, bytearray, memoryview)):
    image = (open_image(source, size) if isinstance(source, (str, os.PathLike))
             else decode_image(source, name, size))
    drafted = bool(image.info.get(DRAFTED))
    grey = _pil_to_grey(image)
  elif isinstance(source, Image.Image):
    _check_size(*source.size, name)
    try:
      grey = _pil_to_grey(source)
    except (OSError, ValueError) as e:
      raise ImageError(f'{name}: cannot read PIL image: {e}') from None
  elif isinstance(source, np.ndarray):
    grey = _array_to_grey(source, name)
  else:
    raise ImageError(f'{name}: expected a file path, encoded image bytes, a numpy array or a '
                     'PIL image')
  return np.ascontiguousarray(grey, dtype=np.float32), drafted


# ---------------------------------------------------------------------------- ink extraction


def _border(grey: np.ndarray) -> np.ndarray:
  b = max(1, round(0.05 * min(grey.shape)))
  return np.concatenate([grey[:b].ravel(), grey[-b:].ravel(), grey[:, :b].ravel(),
                         grey[:, -b:].ravel()])


def _box3(values: np.ndarray) -> np.ndarray:
  """3x3 mean (edges repeated): pixel noise drops threefold, a stroke keeps most of its level."""
  padded = np.pad(values, 1, mode='edge')
  h, w = values.shape
  return sum(padded[dy:dy + h, dx:dx + w] for dy in range(3) for dx in range(3)) / 9.0


def _tail(values: np.ndarray, k: int, top: bool) -> float:
  flat = values.ravel()
  k = min(k, flat.size - 1)
  return float(np.partition(flat, -k - 1)[-k - 1] if top else np.partition(flat, k)[k])


def ink_is_dark(grey: np.ndarray) -> bool:
  """True when the ink is darker than the paper.

  Decided on the image smoothed (noise averaged out) and flattened (a quadratic lighting surface
  fitted to both tails' middle removed): the ink is the side whose extreme pixels deviate more.
  The extremes are the 10th brightest and darkest pixels, not percentiles: a small digit in a
  large frame is far under 1% of the pixels, and percentiles would only see the noise.
  """
  flat = _box3(grey - background(grey, two_sided=True))
  level = float(np.median(_sample(flat)))
  light = _tail(flat, 10, top=True) - level
  dark = level - _tail(flat, 10, top=False)
  if np.isclose(light, dark):
    return float(np.median(_sample(_border(grey)))) > 0.5
  return dark > light


def _quadratic_terms(h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
  y = np.linspace(-1.0, 1.0, h, dtype=np.float32)
  x = np.linspace(-1.0, 1.0, w, dtype=np.float32)
  return y, x


def _surface(coef: np.ndarray, h: int, w: int) -> np.ndarray:
  """c0 + c1 y + c2 x + c3 y^2 + c4 x^2 + c5 y x on an (h, w) grid, built from separable parts."""
  y, x = _quadratic_terms(h, w)
  c = np.asarray(coef, np.float32)
  column = (c[0] + c[1] * y + c[3] * y * y)[:, None]
  row = (c[2] * x + c[4] * x * x)[None, :]
  return column + row + np.outer(c[5] * y, x)


def background(grey: np.ndarray, two_sided: bool = False) -> np.ndarray:
  """The paper's brightness under uneven lighting: a quadratic surface fitted to non-ink pixels.

  Fitted on an area-reduced copy, with three rounds that drop the pixels standing above the
  current fit (the ink, white-on-black at this point), so the strokes do not lift the surface;
  `two_sided` drops those standing out on either side (ink of unknown polarity).
  """
  small = _reduce(grey, FIT_SIZE)
  h, w = small.shape
  y, x = _quadratic_terms(h, w)
  yy, xx = np.meshgrid(y, x, indexing='ij')
  design = np.stack([np.ones_like(yy), yy, xx, yy * yy, xx * xx, yy * xx], -1).reshape(-1, 6)
  values = small.ravel()
  low, high = np.percentile(values, [20, 80] if two_sided else [0, 60])
  keep = (values >= low) & (values <= high)
  coef = np.zeros(6, np.float32)
  for _ in range(3):
    if keep.sum() < 12:
      break
    kept = design[keep]
    # Normal equations (6x6) with a tiny ridge: much cheaper than an SVD least squares.
    coef = np.linalg.solve(kept.T @ kept + 1e-4 * np.eye(6), kept.T @ values[keep])
    residual = values - design @ coef
    spread = 1.4826 * np.median(np.abs(residual[keep])) + 1e-3
    keep = (np.abs(residual) if two_sided else residual) < 2.5 * spread
  return _surface(coef, *grey.shape)


def _sample(values: np.ndarray, limit: int = 8000) -> np.ndarray:
  """At most about `limit` evenly strided values: robust statistics need no more."""
  flat = values.ravel()
  return flat[::max(1, flat.size // limit)]


def _noise(sample: np.ndarray) -> tuple[float, float]:
  """(level, sigma) of the paper: median and MAD of the lower 60% of `sample`."""
  paper = sample[sample <= np.percentile(sample, 60)]
  if not paper.size:
    return 0.0, 0.0
  level = float(np.median(paper))
  return level, 1.4826 * float(np.median(np.abs(paper - level)))


def _dilate(mask: np.ndarray, radius: int) -> np.ndarray:
  """A boolean mask grown by `radius` pixels (a square), by shifted ORs along each axis."""
  out = mask.copy()
  for axis in (0, 1):
    grown = out.copy()
    for shift in range(1, radius + 1):
      ahead = [slice(None)] * 2
      behind = [slice(None)] * 2
      ahead[axis], behind[axis] = slice(shift, None), slice(None, -shift)
      grown[tuple(ahead)] |= out[tuple(behind)]
      grown[tuple(behind)] |= out[tuple(ahead)]
    out = grown
  return out


def _coherence_threshold(smooth: np.ndarray) -> float:
  """NOISE_SIGMAS noise levels above the paper's level in the smoothed residual.

  The level is the median and the noise level comes from the lower side only (median minus
  16th percentile: one sigma of Gaussian noise), where no ink is: unbiased by the ink, and by
  the tail of false positives that a one-in-a-thousand underestimate gives in a large frame.
  """
  low, level = np.percentile(_sample(smooth, 20000), [15.87, 50])
  return float(level + NOISE_SIGMAS * (level - low))


def flat_paper(grey: np.ndarray) -> float | None:
  """The paper's grey level when the border is one exact level (a drawing made on a computer,
  the page's canvas, an MNIST digit): no lighting to fit and no noise to measure. Else None."""
  border = _border(grey)
  low, high = float(border.min()), float(border.max())
  return low if high - low < 0.5 / 255 else None


def _design(h: int, w: int, terms: int) -> np.ndarray:
  """(h * w, terms) columns 1, y, x[, y^2, x^2, y x] of a surface on an (h, w) grid."""
  y, x = _quadratic_terms(h, w)
  yy, xx = np.meshgrid(y, x, indexing='ij')
  return np.stack([np.ones_like(yy), yy, xx, yy * yy, xx * xx, yy * xx][:terms], -1).reshape(-1, terms)


def _fit(design: np.ndarray, values: np.ndarray) -> np.ndarray:
  """Least-squares coefficients (normal equations with a tiny ridge: a few columns only)."""
  return np.linalg.solve(design.T @ design + 1e-4 * np.eye(design.shape[1]), design.T @ values)


def fine_noise(values: np.ndarray) -> float:
  """The pixel noise level, from the Laplacian (a pixel minus its 4 neighbours' mean): smooth
  shading, blurred strokes and lighting cancel there and noise does not, so no paper is needed
  to measure it on. Its median absolute value over the frame, scaled to one Gaussian sigma."""
  if min(values.shape) < 3:
    return 0.0
  lap = values[1:-1, 1:-1] - 0.25 * (values[:-2, 1:-1] + values[2:, 1:-1] + values[1:-1, :-2]
                                     + values[1:-1, 2:])
  return 1.4826 * float(np.median(np.abs(_sample(lap)))) / np.sqrt(1.25)


def _neighbour_correlation(values: np.ndarray) -> float:
  """The correlation of horizontally and of vertically adjacent pixels, the lower of the two."""
  centred = values - values.mean()
  variance = float((centred * centred).mean())
  if variance <= 0 or min(values.shape) < 2:
    return 0.0
  return min(float((centred[1:] * centred[:-1]).mean()),
             float((centred[:, 1:] * centred[:, :-1]).mean())) / variance


def _pieces(mask: np.ndarray) -> int:
  """How many 4-connected pieces of `mask` cover 2% of its frame or more (specks left out)."""
  h, w = mask.shape
  labels = np.where(mask, np.arange(1, h * w + 1).reshape(h, w), 0)
  while True:  # every pixel takes its piece's largest label: as many rounds as the piece is long
    padded = np.pad(labels, 1)
    grown = mask * np.maximum.reduce([labels, padded[:-2, 1:-1], padded[2:, 1:-1],
                                      padded[1:-1, :-2], padded[1:-1, 2:]])
    if np.array_equal(grown, labels):
      break
    labels = grown
  sizes = np.unique(labels[mask], return_counts=True)[1]
  return int((sizes >= 0.02 * h * w).sum())


def _two_sides(grey: np.ndarray):
  """(reduced copy, its plane design, it less the plane's tilt, 2nd and 98th percentile of that):
  the grey levels of a filled frame, split at the middle of that range into ink and paper."""
  small = _reduce(grey, FIT_SIZE)
  plane = _design(*small.shape, 3)
  values = small.ravel()
  flat = (values - plane[:, 1:] @ _fit(plane, values)[1:]).reshape(small.shape)
  low, high = np.percentile(flat, [2, 98])
  return small, plane, flat, float(low), float(high)


def ink_sides(grey: np.ndarray) -> tuple[bool, bool] | None:
  """(whether the ink is dark, whether it fills the frame) when the grey levels are a picture of
  ink on paper; None when they are blank, noise, or a smooth surface (paper under uneven light).

  A digit fills the frame when its ink reaches the edges with no paper margin (a thumbnail, a
  low-resolution scan enlarged, a tight crop). Decided on a reduced copy with the lighting's tilt
  (a plane) removed, its grey levels split at the middle of their range: the ink is the side that
  holds less of the frame and of its border together (the paper surrounds the digit, even where
  strokes touch the edges).
  """
  small, _, flat, low, high = _two_sides(grey)
  spread = high - low
  if spread < MIN_INK_CONTRAST or _neighbour_correlation(flat) < FILLED_CORRELATION:
    return None
  quadratic = _design(*small.shape, 6)
  values = small.ravel()
  unexplained = np.percentile(values - quadratic @ _fit(quadratic, values), [2, 98])
  if unexplained[1] - unexplained[0] < FILLED_UNEXPLAINED * spread:
    return None
  dark = flat < 0.5 * (low + high)
  border = np.zeros(dark.shape, bool)
  b = max(1, round(0.05 * min(dark.shape)))
  border[:b], border[-b:], border[:, :b], border[:, -b:] = True, True, True, True
  evidence = float(dark.mean() + dark[border].mean())  # under 1: the dark side is the ink
  ink_dark = evidence < 1.0
  if abs(evidence - 1.0) < POLARITY_TIE:
    # A heavy digit filling the frame (a fat 0 along every edge) holds as much of both: its ink
    # is one stroke or two, while the paper around it falls into pieces (corners, sides, holes).
    dark_pieces, light_pieces = _pieces(dark), _pieces(~dark)
    if dark_pieces != light_pieces:
      ink_dark = dark_pieces < light_pieces
  ink = dark if ink_dark else ~dark
  fills = ink.mean() >= FILLED_SHARE and max(ink.any(1).mean(), ink.any(0).mean()) >= FILLED_SPAN
  return ink_dark, bool(fills)


def _filled_ink(grey: np.ndarray) -> tuple[np.ndarray, float, float]:
  """(residual, threshold, noise) of a digit filling the frame, `grey` white ink on black.

  The paper is the lowest PAPER_BAND of the grey range (around the strokes and in their holes);
  a plane fitted to it is the lighting, not the quadratic surface of `background`, which bends
  into ink that covers a third of the frame. The noise is `fine_noise`: a frame without margin
  may hold too little paper to measure it on.
  """
  small, plane, flat, low, high = _two_sides(grey)
  paper = flat.ravel() < low + PAPER_BAND * (high - low)
  coef = _fit(plane[paper], small.ravel()[paper]) if paper.sum() >= 12 else np.zeros(3)
  residual = grey - _surface(np.concatenate([coef, np.zeros(3)]), *grey.shape)
  sample = _sample(residual)
  paper_levels = sample[sample < PAPER_BAND * (high - low)]
  level = float(np.median(paper_levels)) if paper_levels.size else 0.0
  noise = fine_noise(residual)
  return residual, max(3.0 * noise + level, 1.5 / 255), noise


def extract_ink(grey: np.ndarray, name: str = 'image', dark: bool | None = None,
                paper: float | None = None) -> np.ndarray:
  """Grey levels -> ink strength in [0, 1] (white ink on black, background and noise at 0).

  A pixel is ink when it stands 3 noise levels above the paper and lies within two pixels of
  where the smoothed image stands NOISE_SIGMAS of its own (3x smaller) noise above it: strokes
  are coherent, noise is not, so a faint digit covering far under 1% of a noisy frame is found
  and the noise around it is not. A digit that fills the frame (`ink_sides`) leaves too little
  paper for those statistics: its paper is the low end of its grey range and its noise the
  `fine_noise`. The contrast is stretched so the ink's 90th percentile is white. `dark` is the
  polarity when known (None: decided here); `paper` the `flat_paper` level when there is one
  (the fast path, for noise-free drawings: the same result).
  """
  sides = None if paper is not None else ink_sides(grey)
  if dark is None:
    dark = sides[0] if sides and sides[1] else ink_is_dark(grey)
  return _ink_or_filled(grey, name, dark, paper, sides)


def _ink_or_filled(grey: np.ndarray, name: str, dark: bool, paper: float | None,
                   sides: tuple[bool, bool] | None) -> np.ndarray:
  """`_ink` of a frame the digit fills, else of the general statistics. When those find nothing
  in a picture of ink on paper (`sides`), it is read as filled, with its polarity: a digit a
  little short of the frame's edges still leaves too little paper for them, and is no blank."""
  if sides and sides[1]:
    return _ink(grey, name, dark, paper, True)
  try:
    return _ink(grey, name, dark, paper, False)
  except NoDigitError:
    if not sides:
      raise
  return _ink(grey, name, sides[0], paper, True)


def _ink(grey: np.ndarray, name: str, dark: bool, paper: float | None,
         filled: bool) -> np.ndarray:
  """`extract_ink` with the polarity and the kind of frame decided."""
  if dark:
    grey = 1.0 - grey
    paper = None if paper is None else 1.0 - paper
  if paper is not None:
    residual, noise = grey - np.float32(paper), 0.0
    threshold, coherent = 1.5 / 255, None
    candidates = residual[residual > threshold]
  elif filled:
    residual, threshold, noise = _filled_ink(grey)
    coherent = None
    candidates = residual[residual > threshold]
  else:
    residual = grey - background(grey)
    level, noise = _noise(_sample(residual))
    threshold = max(3.0 * noise + level, 1.5 / 255)  # a noise-free image keeps all but faint grey
    smooth = _box3(residual)
    coherent = smooth > max(_coherence_threshold(smooth), 1.5 / 255)
    candidates = residual[coherent & (residual > threshold)]
  full = float(np.percentile(_sample(candidates), 90)) if candidates.size else threshold
  contrast = max(full - threshold, 0.0)
  # Weak ink counts when it is clearly above the noise (the rule that refuses blank paper).
  if (candidates.size < MIN_INK_PIXELS or contrast < MIN_INK_CONTRAST
      and (contrast < MIN_FAINT_CONTRAST or contrast < 3.0 * noise)):
    raise NoDigitError(f'{name}: no digit found (blank image, or ink too faint: contrast '
                       f'{contrast:.2f} of the grey range over noise {noise:.3f}, need '
                       f'{MIN_INK_CONTRAST}, or {MIN_FAINT_CONTRAST} and 3x the noise)')
  ink = np.clip((residual - threshold) / (full - threshold), 0.0, 1.0)
  return ink if coherent is None else ink * _dilate(coherent, 2)


# ---------------------------------------------------------------------------- MNIST geometry


def _bounding_box(ink: np.ndarray) -> tuple[int, int, int, int]:
  """Rows r0:r1 and columns c0:c1 of the ink, ignoring isolated noise specks in large images."""
  mask = ink > 0.1
  h, w = ink.shape
  r0, r1, c0, c1 = 0, h, 0, w
  if max(h, w) > SPECK_FILTER_MIN_SIZE:
    # A 3x3 median on a reduced copy removes specks that would stretch the box; the box found
    # there (plus one reduced pixel of slack) bounds the exact full-size box searched below.
    small = _reduce(ink, SPECK_FILTER_MIN_SIZE * 2)
    cleaned = Image.fromarray(((small > 0.1) * 255).astype(np.uint8), 'L')
    cleaned = np.asarray(cleaned.filter(ImageFilter.MedianFilter(3))) > 127
    if cleaned.any():
      sy, sx = h / small.shape[0], w / small.shape[1]
      rows, cols = np.flatnonzero(cleaned.any(1)), np.flatnonzero(cleaned.any(0))
      r0, r1 = int(max(0, (rows[0] - 1) * sy)), int(min(h, np.ceil((rows[-1] + 2) * sy)))
      c0, c1 = int(max(0, (cols[0] - 1) * sx)), int(min(w, np.ceil((cols[-1] + 2) * sx)))
  window = mask[r0:r1, c0:c1]
  if not window.any():
    window, r0, c0 = mask, 0, 0
  rows, cols = np.flatnonzero(window.any(1)), np.flatnonzero(window.any(0))
  return r0 + rows[0], r0 + rows[-1] + 1, c0 + cols[0], c0 + cols[-1] + 1


def _crop_with_margin(ink: np.ndarray, box: tuple[int, int, int, int]) -> tuple[np.ndarray, int]:
  """The box plus a margin of 20% of its long side on every side (zeros beyond the image).

  The margin keeps the faint anti-aliased edge pixels that the box's threshold leaves out;
  at the 20x20 scale it is MNIST's 4-pixel frame.
  """
  r0, r1, c0, c1 = box
  margin = int(np.ceil(0.2 * max(r1 - r0, c1 - c0)))
  out = np.zeros((r1 - r0 + 2 * margin, c1 - c0 + 2 * margin), np.float32)
  h, w = ink.shape
  sr0, sr1, sc0, sc1 = max(0, r0 - margin), min(h, r1 + margin), max(0, c0 - margin), min(w, c1 + margin)
  out[sr0 - r0 + margin:sr1 - r0 + margin, sc0 - c0 + margin:sc1 - c0 + margin] = ink[sr0:sr1, sc0:sc1]
  return out, margin


def _scale(patch: np.ndarray, scale: float) -> np.ndarray:
  """Resizes by `scale` (the digit's long side -> DIGIT_BOX), preserving the aspect ratio."""
  h, w = patch.shape
  size = (max(1, round(w * scale)), max(1, round(h * scale)))
  if size == (w, h):
    return patch
  # Area averaging when shrinking gives MNIST's anti-aliased edges; bilinear when enlarging.
  method = Image.Resampling.BOX if scale < 1 else Image.Resampling.BILINEAR
  return np.clip(np.asarray(Image.fromarray(patch, 'F').resize(size, method)), 0.0, 1.0)


def stroke_width(mask: np.ndarray) -> float:
  """Mean stroke width in pixels of a binary mask: 2 x area / perimeter (a stroke of width w and
  length L has area wL and perimeter ~2L)."""
  mask = np.pad(mask, 1)
  perimeter = (np.count_nonzero(mask[:, 1:] != mask[:, :-1])
               + np.count_nonzero(mask[1:] != mask[:-1]))
  return 2.0 * float(mask.sum()) / max(perimeter, 1)


def _thicken(patch: np.ndarray) -> np.ndarray:
  """Brings thin strokes to MNIST's weight: full contrast, then about two pixels wide.

  A ballpoint line on a photo shrinks to a faint hairline at 20x20, which the model (trained on
  MNIST's 2-3 pixel strokes) reads poorly. Stretching to full contrast and averaging with a 3x3
  max filter gives a bright core with anti-aliased shoulders, like MNIST's strokes.
  """
  patch = patch / max(float(patch.max()), 1e-6)
  grown = np.asarray(Image.fromarray(patch.astype(np.float32), 'F').filter(ImageFilter.MaxFilter(3)))
  return np.clip(0.5 * (patch + grown), 0.0, 1.0)


def _paste(patch: np.ndarray, top: int, left: int) -> np.ndarray:
  """A 28x28 field holding `patch` at (top, left); whatever falls outside is cut off."""
  field = np.zeros((MNIST_SIZE, MNIST_SIZE), np.float32)
  h, w = patch.shape
  fr0, fc0 = max(0, top), max(0, left)
  fr1, fc1 = min(MNIST_SIZE, top + h), min(MNIST_SIZE, left + w)
  if fr1 > fr0 and fc1 > fc0:
    field[fr0:fr1, fc0:fc1] = patch[fr0 - top:fr1 - top, fc0 - left:fc1 - left]
  return field


def _centre_by_mass(patch: np.ndarray, digit_offset: float, digit_shape: tuple[int, int],
                    position: tuple[int, int] | None = None) -> np.ndarray:
  """Places `patch` in a 28x28 field with its centre of mass at MNIST's centre (whole pixels).

  The digit (`digit_shape`, starting `digit_offset` pixels inside the patch) is kept inside the
  field. `position` (top, left) is where the patch already sits in a 28x28 input: kept when it
  is within a pixel of the computed place, since MNIST's own rounding of the centre differs
  from ours by up to a pixel and an MNIST image must pass through unchanged.
  """
  h, w = patch.shape
  mass = patch.sum()
  cy = float((patch.sum(1) * np.arange(h)).sum() / mass)
  cx = float((patch.sum(0) * np.arange(w)).sum() / mass)
  top, left = MNIST_CENTRE - cy, MNIST_CENTRE - cx
  if position is not None and abs(position[0] - top) <= 1 and abs(position[1] - left) <= 1:
    top, left = position
  top = int(np.clip(round(top), -digit_offset, MNIST_SIZE - digit_offset - digit_shape[0]))
  left = int(np.clip(round(left), -digit_offset, MNIST_SIZE - digit_offset - digit_shape[1]))
  return _paste(patch, top, left)


def _zoom(detail, name: str, shape: tuple[int, int], box, dark: bool):
  """(ink, box) of a small digit found again at up to ZOOM_SIZE (`detail()`: the grey levels at
  that size), or None when it is not small, the image was not reduced (no more pixels to see),
  or the closer look finds nothing."""
  r0, r1, c0, c1 = box
  side = max(r1 - r0, c1 - c0)
  if max(shape) < WORK_SIZE or side >= ZOOM_FRACTION * max(shape):
    return None
  detail = detail()
  factor = max(detail.shape) / max(shape)
  if factor < 1.5:
    return None
  pad = side  # the crop: the digit and its own size of paper on every side (for the statistics)
  rows = slice(max(0, int((r0 - pad) * factor)), min(detail.shape[0], int(np.ceil((r1 + pad) * factor))))
  cols = slice(max(0, int((c0 - pad) * factor)), min(detail.shape[1], int(np.ceil((c1 + pad) * factor))))
  try:
    ink = extract_ink(detail[rows, cols], name, dark)
  except NoDigitError:
    return None
  return ink, _bounding_box(ink)


def preprocess(source: ImageLike, name: str | None = None) -> np.ndarray:
  """Any digit image -> what the model sees: uint8 (28, 28), white digit on black, MNIST-style.

  `source` is a file path, encoded image bytes (an upload), a numpy array or a PIL image.
  Raises ImageError (naming the input, or `name` when given) for a missing, unreadable,
  truncated, blank or too large image.
  """
  name = name or describe(source)
  decoded, drafted = _decoded_grey(source, name, WORK_SIZE)
  grey = _enlarge(_reduce(decoded, WORK_SIZE))
  paper = flat_paper(grey)
  sides = None if paper is not None else ink_sides(grey)
  if paper is not None:
    dark = paper - grey.min() > grey.max() - paper
  else:
    dark = sides[0] if sides and sides[1] else ink_is_dark(grey)
  ink = _ink_or_filled(grey, name, dark, paper, sides)
  box = _bounding_box(ink)
  detail = (lambda: load_grey(source, name, ZOOM_SIZE)) if drafted else (
      lambda: _reduce(decoded, ZOOM_SIZE))
  zoomed = _zoom(detail, name, grey.shape, box, dark)
  if zoomed is not None:
    ink, box = zoomed
  r0, r1, c0, c1 = box
  crop, margin = _crop_with_margin(ink, box)
  scale = DIGIT_BOX / max(r1 - r0, c1 - c0)
  patch = _scale(crop, scale)
  if patch is not crop and stroke_width(crop > 0.5) * scale < THIN_STROKE:
    patch = _thicken(patch)
  if patch.sum() <= 0:
    raise NoDigitError(f'{name}: no digit found (the ink vanished when scaled to 20x20)')
  unscaled = ink.shape == (MNIST_SIZE, MNIST_SIZE) and patch is crop
  position = (int(r0) - margin, int(c0) - margin) if unscaled else None
  digit_shape = (min(DIGIT_BOX, round((r1 - r0) * scale)), min(DIGIT_BOX, round((c1 - c0) * scale)))
  field = _centre_by_mass(patch, round(margin * scale), digit_shape, position)
  return np.round(field * 255.0).astype(np.uint8)


def preprocess_batch(sources) -> np.ndarray:
  """Several inputs -> uint8 (N, 28, 28, 1); raises on the first bad one."""
  return np.stack([preprocess(s) for s in sources])[..., None]


# ---------------------------------------------------------------------------- test images


def render_photo_like(digit: np.ndarray, rng: np.random.Generator, size: int = 0,
                      quality: int = 0) -> Image.Image:
  """An MNIST digit as a phone photo of it: dark ink on lit paper, off-centre, enlarged, JPEG.

  `digit` is uint8 (28, 28[, 1]) white-on-black. The digit is enlarged to `size` pixels (default:
  random 150-330) on an RGB sheet 1.3-2x larger, at a random place; the paper is tinted and
  unevenly lit, the pixels get sensor noise, and the result is JPEG-compressed at `quality`
  (default: random 60-90) and decoded again. Used by the tests and `experiments/make_samples.py`
  to check `preprocess` against what people actually feed it.
  """
  digit = np.asarray(digit, np.uint8).reshape(MNIST_SIZE, MNIST_SIZE)
  size = size or int(rng.integers(150, 330))
  ink = np.asarray(Image.fromarray(digit, 'L').resize((size, size), Image.Resampling.BICUBIC),
                   np.float32) / 255.0
  height, width = (int(size * rng.uniform(1.3, 2.0)) for _ in range(2))
  top, left = int(rng.integers(0, height - size + 1)), int(rng.integers(0, width - size + 1))
  sheet = np.zeros((height, width), np.float32)
  sheet[top:top + size, left:left + size] = np.clip(ink, 0.0, 1.0)
  y = np.linspace(-1.0, 1.0, height, dtype=np.float32)[:, None]
  x = np.linspace(-1.0, 1.0, width, dtype=np.float32)[None, :]
  light = np.float32(rng.uniform(0.75, 0.92)) * (
      1 + np.float32(rng.uniform(-0.12, 0.12)) * y + np.float32(rng.uniform(-0.12, 0.12)) * x)
  lit_paper = light * (1.0 - sheet)
  # Sensor noise, shared by the three channels (luminance noise dominates in phone photos).
  noise = rng.standard_normal((height, width), np.float32) * np.float32(rng.uniform(0.01, 0.03))
  tint = (1.0, rng.uniform(0.95, 1.0), rng.uniform(0.85, 0.97))  # warm paper
  pen = (0.12, 0.12, rng.uniform(0.15, 0.35))  # dark blue-black ink
  rgb = np.stack([lit_paper * np.float32(t) + np.float32(p) * sheet + noise
                  for t, p in zip(tint, pen)], -1)
  image = Image.fromarray((np.clip(rgb, 0.0, 1.0) * 255 + 0.5).astype(np.uint8), 'RGB')
  buffer = io.BytesIO()
  image.save(buffer, 'JPEG', quality=quality or int(rng.integers(60, 91)))
  buffer.seek(0)
  decoded = Image.open(buffer)
  decoded.load()
  return decoded


# ---------------------------------------------------------------------------- any data set


def prepare(source: ImageLike, spec, name: str | None = None) -> np.ndarray:
  """Any image -> one image of data set `spec` (a `data.DatasetSpec`): uint8 `spec.image_shape`,
  made the way the data set says (`spec.prepare`):

  * 'handwriting': MNIST's steps (`preprocess`), for MNIST, KMNIST and EMNIST;
  * 'fit_on_black': Fashion-MNIST's own conversion (`fit_on_black`);
  * 'resize': the whole image resized to the image size (`resize`), the default for your own;
  * a function (source, name) -> uint8 image of the data set's shape: your own.

  Raises ImageError (naming the input, or `name`) for a missing, unreadable or blank image.
  """
  name = name or describe(source)
  way, shape = spec.prepare, tuple(spec.image_shape)
  if callable(way):
    image = np.asarray(way(source, name))
    if image.dtype != np.uint8 or image.size != int(np.prod(shape)):
      raise ValueError(f'data set {spec.name!r}: its prepare function returned {image.dtype} '
                       f'{image.shape}; expected uint8 of shape {shape}')
    return image.reshape(shape)
  if way == 'handwriting':
    return preprocess(source, name).reshape(shape)
  if way == 'fit_on_black':
    return fit_on_black(source, shape, name)
  return resize(source, shape, name)


def _resized(values: np.ndarray, width: int, height: int) -> np.ndarray:
  """A float (H, W) plane resized: area averaging when shrinking, bilinear when enlarging."""
  h, w = values.shape
  method = Image.Resampling.BOX if width <= w and height <= h else Image.Resampling.BILINEAR
  return np.asarray(Image.fromarray(np.ascontiguousarray(values, np.float32), 'F').resize(
      (width, height), method))


def _to_uint8(values: np.ndarray, shape: tuple[int, int, int]) -> np.ndarray:
  """Float [0, 1] (H, W) or (H, W, 3) -> uint8 of `shape`, grey repeated over the channels."""
  values = np.clip(values, 0.0, 1.0)
  if values.ndim == 2:
    values = np.repeat(values[..., None], shape[-1], axis=-1)
  elif shape[-1] == 1:
    values = _luminance(values)[..., None]
  return np.round(values * 255.0).astype(np.uint8).reshape(shape)


def fit_on_black(source: ImageLike, shape: tuple[int, int, int],
                 name: str | None = None) -> np.ndarray:
  """An object photo -> a Fashion-MNIST-style image: uint8 `shape`, the object light on black.

  Fashion-MNIST's own conversion of Zalando's product photos, without its sharpening: the
  background (the border's median grey) trimmed away, the object's long side resized to the
  image size with its aspect ratio kept, centred, and negated when the background is light, so
  that the background is black. The background level is subtracted, so a grey backdrop is black
  too.
  """
  name = name or describe(source)
  grey = load_grey(source, name)
  level = float(np.median(_border(grey)))
  if level > 0.5:
    grey, level = 1.0 - grey, 1.0 - level
  mask = np.abs(grey - level) > 0.05  # Fashion-MNIST's trimming: within 5% of the border's tone
  if not mask.any():
    raise NoDigitError(f'{name}: nothing in the image stands out from its background (blank?)')
  rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
  crop = grey[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1]
  crop = np.clip((crop - level) / max(1.0 - level, 1e-3), 0.0, 1.0)
  height, width = shape[:2]
  scale = min(height / crop.shape[0], width / crop.shape[1])
  new_h, new_w = max(1, round(crop.shape[0] * scale)), max(1, round(crop.shape[1] * scale))
  field = np.zeros((height, width), np.float32)
  top, left = (height - new_h) // 2, (width - new_w) // 2
  field[top:top + new_h, left:left + new_w] = _resized(crop, new_w, new_h)
  return _to_uint8(field, shape)


def resize(source: ImageLike, shape: tuple[int, int, int], name: str | None = None) -> np.ndarray:
  """Any image -> uint8 `shape` (H, W, 1 or 3): the whole image resized, grey or RGB, nothing
  else."""
  name = name or describe(source)
  height, width, channels = shape
  if channels not in (1, 3):
    raise ValueError(f'resize makes grey (1) or RGB (3) images, not {channels} channels; give the '
                     'data set a prepare function of its own')
  if channels == 1:
    return _to_uint8(_resized(load_grey(source, name), width, height), shape)
  rgb = load_rgb(source, name)
  return _to_uint8(np.stack([_resized(rgb[..., k], width, height) for k in range(3)], -1), shape)


def load_rgb(source: ImageLike, name: str | None = None, size: int = WORK_SIZE) -> np.ndarray:
  """An image file, encoded bytes, array or PIL image -> float32 (H, W, 3) RGB in [0, 1], long
  side <= `size`; transparency composited on white, grey images repeated over the channels."""
  name = name or describe(source)
  if isinstance(source, np.ndarray):
    array = np.asarray(source)
    if array.ndim == 2 or (array.ndim == 3 and array.shape[-1] == 1):
      return np.repeat(load_grey(array, name, size)[..., None], 3, axis=-1)
    if array.ndim != 3 or array.shape[-1] not in (3, 4):
      raise ImageError(f'{name}: expected an image array of shape (H, W), (H, W, 1), (H, W, 3) or '
                       f'(H, W, 4), got {array.shape}')
    _check_size(array.shape[1], array.shape[0], name)
    image = Image.fromarray(_unit_to_uint8(array, name))
  elif isinstance(source, Image.Image):
    _check_size(*source.size, name)
    image = source
  elif isinstance(source, (str, os.PathLike)):
    image = open_image(source, size)
  elif isinstance(source, (bytes, bytearray, memoryview)):
    image = decode_image(bytes(source), name, size)
  else:
    raise ImageError(f'{name}: expected a file path, encoded image bytes, a numpy array or a '
                     'PIL image')
  try:
    image = ImageOps.exif_transpose(image) or image
    if image.mode in ('RGBA', 'LA', 'PA', 'RGBa', 'La') or 'transparency' in image.info:
      rgba = image.convert('RGBA')
      image = Image.alpha_composite(Image.new('RGBA', rgba.size, (255, 255, 255, 255)), rgba)
    image = image.convert('RGB')
  except (OSError, ValueError) as e:
    raise ImageError(f'{name}: cannot read image: {e}') from None
  if max(image.size) > size:
    factor = size / max(image.size)
    image = image.resize((max(1, round(image.size[0] * factor)),
                          max(1, round(image.size[1] * factor))), Image.Resampling.BOX)
  return np.asarray(image, np.float32) / 255.0


def _unit_to_uint8(array: np.ndarray, name: str) -> np.ndarray:
  """An (H, W, 3|4) array of uint8, uint16, bool or float ([0, 1] or [0, 255]) -> uint8."""
  if array.dtype == np.uint8:
    return array
  if array.dtype == np.uint16:
    return (array // 257).astype(np.uint8)
  if array.dtype == np.bool_:
    return array.astype(np.uint8) * 255
  if not np.issubdtype(array.dtype, np.number):
    raise ImageError(f'{name}: unsupported image array dtype {array.dtype}')
  values = array.astype(np.float32)
  if not np.all(np.isfinite(values)):
    raise ImageError(f'{name}: image array holds NaN or infinite values')
  if values.max() <= 1.0:
    values = values * 255.0
  return np.round(np.clip(values, 0.0, 255.0)).astype(np.uint8)
