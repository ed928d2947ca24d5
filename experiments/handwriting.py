"""Non-MNIST evaluation sets (issue #15): digits as people feed them to the page and to
`mnist-flax predict`, generated here (seeded, nothing committed), scored per kind of input.

Digit shapes ("sources"), each an ink image (white on black, float in [0, 1]):
  strokes  pen drawings from stroke templates (two or three ways of writing each digit: open
           and closed 4, flagged 1, crossed 7, ...), every point jittered, slanted, sheared,
           squeezed and drawn with a random pen width: what a person draws on the page;
  uci43    the UCI/scikit-learn handwritten digits: 1,797 low-resolution scans from 43 writers
           who are not MNIST's (8x8, 17 grey levels; needs scikit-learn, which ships them);
  mnist    MNIST test digits (one source among three, not the only one).
Renderings ("kinds"), each an encoded image file, as a person would send it:
  clean           dark ink on a white 280x280 canvas, anywhere, 40-85% of its height (a PNG);
  light_on_dark   chalk or a light pen on a dark, slightly noisy board;
  small_in_frame  a faint light digit 20-48 px high in a large dark noisy frame (<1% of it);
  photo           a blurred phone photo of the digit on unevenly lit paper (JPEG);
  thumbnail       a low-resolution scan filling its frame: the digit cropped to its ink, scanned
                  at 8-16 px, kept or enlarged to 16-64 px, blurred; dark on white, ink to the edges.

    python experiments/handwriting.py                          # the shipped model, every set
    python experiments/handwriting.py --workdir runs/r --n 300 --save /tmp/sets   # + the images
Prints a markdown table: accuracy and refusals (no digit found) per source and kind.
"""

from __future__ import annotations

import argparse
import io
import pathlib
import sys
import time

import numpy as np
from PIL import Image, ImageDraw

# A stroke is (points in a unit box, x right and y down; smooth?). Straight strokes keep corners.
TEMPLATES = {
    0: [[([(0.5, 0.05), (0.25, 0.2), (0.2, 0.5), (0.27, 0.82), (0.5, 0.95), (0.73, 0.82),
          (0.8, 0.5), (0.75, 0.18), (0.5, 0.05), (0.42, 0.1)], True)]],
    1: [[([(0.5, 0.05), (0.5, 0.95)], False)],
        [([(0.3, 0.22), (0.55, 0.05), (0.55, 0.95)], False)],
        [([(0.3, 0.22), (0.55, 0.05), (0.55, 0.95)], False), ([(0.3, 0.95), (0.8, 0.95)], False)]],
    2: [[([(0.2, 0.28), (0.32, 0.1), (0.52, 0.05), (0.72, 0.14), (0.75, 0.32), (0.6, 0.55),
          (0.2, 0.95)], True), ([(0.2, 0.95), (0.82, 0.95)], False)],
        [([(0.22, 0.25), (0.45, 0.05), (0.72, 0.15), (0.7, 0.4), (0.25, 0.9), (0.3, 0.95),
          (0.5, 0.88), (0.82, 0.95)], True)]],
    3: [[([(0.2, 0.15), (0.45, 0.05), (0.7, 0.12), (0.72, 0.3), (0.45, 0.47), (0.75, 0.6),
          (0.78, 0.8), (0.5, 0.95), (0.2, 0.85)], True)],
        [([(0.2, 0.06), (0.75, 0.06), (0.45, 0.42)], False),
         ([(0.45, 0.42), (0.75, 0.58), (0.77, 0.8), (0.5, 0.95), (0.2, 0.86)], True)]],
    4: [[([(0.62, 0.05), (0.15, 0.65), (0.85, 0.65)], False), ([(0.66, 0.3), (0.66, 0.95)], False)],
        [([(0.25, 0.05), (0.2, 0.58), (0.82, 0.58)], False), ([(0.7, 0.05), (0.7, 0.95)], False)]],
    5: [[([(0.78, 0.05), (0.3, 0.05), (0.25, 0.45)], False),
         ([(0.25, 0.45), (0.55, 0.38), (0.78, 0.55), (0.76, 0.8), (0.5, 0.95), (0.2, 0.86)], True)],
        [([(0.3, 0.05), (0.25, 0.45)], False),
         ([(0.25, 0.45), (0.55, 0.38), (0.78, 0.55), (0.76, 0.8), (0.5, 0.95), (0.2, 0.86)], True),
         ([(0.3, 0.05), (0.78, 0.05)], False)]],
    6: [[([(0.7, 0.05), (0.45, 0.2), (0.28, 0.5), (0.25, 0.75), (0.45, 0.95), (0.7, 0.85),
          (0.72, 0.62), (0.5, 0.5), (0.27, 0.65)], True)]],
    7: [[([(0.15, 0.08), (0.85, 0.08), (0.4, 0.95)], False)],
        [([(0.15, 0.08), (0.85, 0.08), (0.4, 0.95)], False), ([(0.33, 0.5), (0.77, 0.5)], False)],
        [([(0.15, 0.2), (0.2, 0.08), (0.85, 0.08), (0.5, 0.95)], False)]],
    8: [[([(0.7, 0.15), (0.5, 0.05), (0.28, 0.15), (0.3, 0.35), (0.5, 0.48), (0.72, 0.62),
          (0.72, 0.85), (0.5, 0.95), (0.28, 0.85), (0.28, 0.62), (0.5, 0.48), (0.7, 0.35),
          (0.7, 0.15)], True)]],
    9: [[([(0.72, 0.3), (0.6, 0.08), (0.4, 0.05), (0.27, 0.2), (0.3, 0.42), (0.5, 0.48),
          (0.72, 0.33)], True), ([(0.72, 0.2), (0.7, 0.95)], False)],
        [([(0.72, 0.3), (0.6, 0.08), (0.4, 0.05), (0.27, 0.2), (0.3, 0.42), (0.5, 0.48),
          (0.72, 0.33), (0.72, 0.6), (0.62, 0.85), (0.4, 0.95)], True)]],
}
JPEG_MAGIC = b'\xff\xd8'
SOURCES = ('strokes', 'uci43', 'mnist')
KINDS = ('clean', 'light_on_dark', 'small_in_frame', 'photo', 'thumbnail')


def _catmull_rom(points: np.ndarray, per_segment: int = 12) -> np.ndarray:
  """A smooth curve through `points` (end points repeated as their own tangents' anchors)."""
  p = np.concatenate([points[:1], points, points[-1:]])
  t = np.linspace(0, 1, per_segment, endpoint=False)[:, None]
  out = []
  for i in range(1, len(p) - 2):
    p0, p1, p2, p3 = p[i - 1], p[i], p[i + 1], p[i + 2]
    out.append(0.5 * ((2 * p1) + (-p0 + p2) * t + (2 * p0 - 5 * p1 + 4 * p2 - p3) * t ** 2
                      + (-p0 + 3 * p1 - 3 * p2 + p3) * t ** 3))
  return np.concatenate(out + [points[-1:]])


def stroke_paths(digit: int, rng: np.random.Generator) -> tuple[list[np.ndarray], float]:
  """One random way of writing `digit`: its strokes as (N, 2) points in a unit box (the
  drawing's long side spans 0.1-0.9, centred), and a pen width relative to the box."""
  template = TEMPLATES[digit][rng.integers(len(TEMPLATES[digit]))]
  angle = np.deg2rad(rng.uniform(-12, 12))
  shear, squeeze = rng.uniform(-0.3, 0.15), rng.uniform(0.65, 1.15)
  linear = (np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
            @ np.array([[1, shear], [0, 1]]) @ np.diag([squeeze, 1.0]))
  lines = []
  for points, smooth in template:
    points = np.asarray(points) + rng.normal(0, 0.025, (len(points), 2))
    lines.append(_catmull_rom(points) if smooth else points)
  lines = [(line - 0.5) @ linear.T for line in lines]
  allpoints = np.concatenate(lines)
  lo, hi = allpoints.min(0), allpoints.max(0)
  scale = 0.8 / max(hi - lo)  # the drawing's long side: 80% of the box
  width = rng.uniform(0.05, 0.15) * 0.8  # pen width, relative to the box
  return [(line - (lo + hi) / 2) * scale + 0.5 for line in lines], width


def draw_strokes(digit: int, rng: np.random.Generator, size: int = 200) -> np.ndarray:
  """One random pen drawing of `digit`: ink (size, size), white on black, anti-aliased."""
  lines, width = stroke_paths(digit, rng)
  big = 4 * size  # drawn 4x larger, then reduced: anti-aliased edges
  canvas = Image.new('L', (big, big), 0)
  pen = ImageDraw.Draw(canvas)
  radius = width * big / 2
  for line in lines:
    xy = line * big
    pen.line([tuple(q) for q in xy], fill=255, width=max(1, int(2 * radius)), joint='curve')
    for x, y in xy[[0, -1]]:  # round caps
      pen.ellipse((x - radius, y - radius, x + radius, y + radius), fill=255)
  return np.asarray(canvas.resize((size, size), Image.Resampling.BOX), np.float32) / 255.0


def source_digits(source: str, n: int, rng: np.random.Generator, idx_dir=None):
  """(labels, ink images) of one source, `n` of them (fewer where the source has fewer)."""
  if source == 'strokes':
    labels = np.arange(n) % 10
    return labels, [draw_strokes(int(d), rng) for d in labels]
  if source == 'uci43':
    from sklearn.datasets import load_digits  # pylint: disable=import-outside-toplevel
    digits = load_digits()
    pick = rng.permutation(len(digits.target))[:n]
    return digits.target[pick], [np.pad(digits.images[i] / 16.0, 1) for i in pick]
  from mnist_flax import data  # pylint: disable=import-outside-toplevel
  images = data.read_idx(pathlib.Path(idx_dir) / 't10k-images-idx3-ubyte.gz')
  labels = data.read_idx(pathlib.Path(idx_dir) / 't10k-labels-idx1-ubyte.gz')
  pick = rng.permutation(len(labels))[:n]
  return labels[pick], [images[i] / 255.0 for i in pick]


def _resized(ink: np.ndarray, height: int) -> np.ndarray:
  """The ink scaled so that its inked rows span `height` pixels (smooth: bicubic up, box down)."""
  rows = np.flatnonzero(ink.max(1) > 0.2)
  span = (rows[-1] - rows[0] + 1) if rows.size else ink.shape[0]
  factor = height / span
  size = (max(1, round(ink.shape[1] * factor)), max(1, round(ink.shape[0] * factor)))
  method = Image.Resampling.BICUBIC if factor > 1 else Image.Resampling.BOX
  return np.clip(np.asarray(Image.fromarray(ink.astype(np.float32), 'F').resize(size, method)), 0, 1)


def _place(ink: np.ndarray, shape: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
  sheet = np.zeros(shape, np.float32)
  h, w = min(ink.shape[0], shape[0]), min(ink.shape[1], shape[1])
  top, left = rng.integers(0, shape[0] - h + 1), rng.integers(0, shape[1] - w + 1)
  sheet[top:top + h, left:left + w] = ink[:h, :w]
  return sheet


def _blur(image: np.ndarray, sigma: float) -> np.ndarray:
  from scipy import ndimage  # pylint: disable=import-outside-toplevel  (JAX's dependency)
  return ndimage.gaussian_filter(image, sigma) if sigma > 0 else image


def _encode(grey_or_rgb: np.ndarray, fmt: str, quality: int = 90) -> bytes:
  array = (np.clip(grey_or_rgb, 0, 1) * 255 + 0.5).astype(np.uint8)
  buffer = io.BytesIO()
  Image.fromarray(array).save(buffer, fmt, **({'quality': quality} if fmt == 'JPEG' else {}))
  return buffer.getvalue()


def render(kind: str, ink: np.ndarray, rng: np.random.Generator) -> bytes:
  """One encoded image file of `ink` (white on black) as input of `kind`."""
  if kind == 'clean':  # the page's canvas: black pen on white
    sheet = _place(_resized(ink, int(rng.uniform(0.4, 0.85) * 280)), (280, 280), rng)
    return _encode(1.0 - sheet, 'PNG')
  if kind == 'light_on_dark':  # chalk on a board
    side = int(rng.integers(240, 640))
    sheet = _place(_resized(ink, int(rng.uniform(0.35, 0.8) * side)), (side, side), rng)
    board, chalk = rng.uniform(0.03, 0.3), rng.uniform(0.65, 1.0)
    sheet = _blur(sheet, rng.uniform(0, 1.5))
    noise = rng.normal(0, rng.uniform(0.005, 0.03), sheet.shape)
    return _encode(board + (chalk - board) * sheet + noise, 'PNG')
  if kind == 'small_in_frame':  # faint, small, in a large dark noisy frame
    shape = (int(rng.integers(600, 1200)), int(rng.integers(800, 1600)))
    sheet = _place(_resized(ink, int(rng.integers(20, 49))), shape, rng)
    y = np.linspace(-1, 1, shape[0], dtype=np.float32)[:, None]
    dark = rng.uniform(0.02, 0.15) * (1 + rng.uniform(-0.3, 0.3) * y)
    noise = rng.normal(0, rng.uniform(0.01, 0.03), shape).astype(np.float32)
    return _encode(dark + rng.uniform(0.2, 0.5) * sheet + noise, 'PNG')
  if kind == 'photo':  # a defocused phone photo of ink on paper, JPEG
    size = int(rng.integers(150, 330))
    ink = _resized(ink, size)
    shape = tuple(int(s * rng.uniform(1.3, 2.0)) for s in ink.shape)
    sheet = _place(ink, shape, rng)
    sheet = _blur(sheet, rng.uniform(1, 3.5))
    y = np.linspace(-1, 1, shape[0], dtype=np.float32)[:, None]
    x = np.linspace(-1, 1, shape[1], dtype=np.float32)[None, :]
    light = rng.uniform(0.7, 0.92) * (1 + rng.uniform(-0.15, 0.15) * y + rng.uniform(-0.15, 0.15) * x)
    noise = rng.normal(0, rng.uniform(0.01, 0.03), shape)
    paper = np.stack([light * t * (1 - sheet) + p * sheet + noise
                      for t, p in zip((1.0, rng.uniform(0.95, 1), rng.uniform(0.85, 0.97)),
                                      (0.12, 0.12, rng.uniform(0.15, 0.35)))], -1)
    return _encode(paper, 'JPEG', int(rng.integers(55, 91)))
  if kind == 'thumbnail':
    return _encode(thumbnail(ink, rng), 'PNG')
  raise ValueError(f'unknown kind {kind!r}; valid: {", ".join(KINDS)}')


def thumbnail(ink: np.ndarray, rng: np.random.Generator) -> np.ndarray:
  """`ink` as a low-resolution scanner or a thumbnail gives it: grey levels in [0, 1].

  The digit is cropped to its ink and made to fill a square frame, scanned at 8-16 pixels (each
  the mean of its area, in 17 grey levels), kept at that size or enlarged to 16-64 pixels
  (nearest, bilinear or bicubic), and blurred: dark strokes on white paper touching the frame's
  edges, no margin to measure the paper on.
  """
  rows, cols = np.flatnonzero(ink.max(1) > 0.2), np.flatnonzero(ink.max(0) > 0.2)
  ink = ink[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1].astype(np.float32)
  scan = int(rng.choice([8, 10, 12, 16]))
  fine = 8 * scan  # the frame at 8x the scan's resolution, then area-averaged
  h, w = ink.shape
  # The long side spans the frame; the short one is widened by up to 1.6x (some scanners
  # normalise both sides), as far as the frame, and centred.
  scale = fine / max(h, w)
  stretch = rng.uniform(1.0, 1.6)
  size = (min(fine, max(1, round(w * scale * (stretch if w < h else 1)))),
          min(fine, max(1, round(h * scale * (stretch if h < w else 1)))))
  ink = np.clip(np.asarray(Image.fromarray(ink, 'F').resize(size, Image.Resampling.BILINEAR)), 0, 1)
  frame = np.zeros((fine, fine), np.float32)
  top, left = (fine - ink.shape[0]) // 2, (fine - ink.shape[1]) // 2
  frame[top:top + ink.shape[0], left:left + ink.shape[1]] = ink
  scanned = np.round(frame.reshape(scan, 8, scan, 8).mean((1, 3)) * 16) / 16
  side = int(rng.choice([scan] + [s for s in (16, 24, 32, 48, 64) if s >= 2 * scan]))
  method = [Image.Resampling.NEAREST, Image.Resampling.BILINEAR,
            Image.Resampling.BICUBIC][rng.integers(3)]
  big = np.asarray(Image.fromarray(scanned, 'F').resize((side, side), method))
  big = np.clip(_blur(big, rng.uniform(0, 0.6) * side / scan), 0, 1)
  paper, pen = rng.uniform(0.85, 1.0), rng.uniform(0.0, 0.15)
  return paper - (paper - pen) * big + rng.normal(0, rng.uniform(0, 0.01), big.shape)


def make_set(source: str, kind: str, n: int, seed: int = 0, idx_dir=None):
  """(labels, encoded images) of one set; the same seed gives the same images."""
  rng = np.random.default_rng([seed, SOURCES.index(source), KINDS.index(kind)])
  labels, inks = source_digits(source, n, rng, idx_dir)
  return labels, [render(kind, ink, rng) for ink in inks]


def evaluate(classifier, labels, images) -> dict:
  """Accuracy (a refusal counts as wrong), refusals, and mistakes as (index, label, guess)."""
  from mnist_flax.inference import preprocess  # pylint: disable=import-outside-toplevel
  from mnist_flax.errors import ImageError  # pylint: disable=import-outside-toplevel
  seen, kept, refused = [], [], 0
  for i, data in enumerate(images):
    try:
      seen.append(preprocess.preprocess(data))
      kept.append(i)
    except ImageError:
      refused += 1
  guesses = np.full(len(labels), -1)
  if seen:
    guesses[kept] = np.argmax(classifier.probabilities(np.stack(seen)), -1)
  correct = guesses == np.asarray(labels)
  return {'accuracy': float(correct.mean()), 'refused': refused, 'n': len(labels),
          'mistakes': [(int(i), int(labels[i]), int(guesses[i])) for i in np.flatnonzero(~correct)]}


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  parser.add_argument('--workdir', action='append', help='model(s), as for `mnist-flax predict` '
                      '(repeat to compare models: one column each); default: the shipped model')
  parser.add_argument('--n', type=int, default=500, help='images per source and kind')
  parser.add_argument('--sources', default=','.join(SOURCES))
  parser.add_argument('--kinds', default=','.join(KINDS))
  parser.add_argument('--seed', type=int, default=0)
  parser.add_argument('--save', help='also write the images here (<source>/<kind>/<i>_<label>.*)')
  parser.add_argument('--idx-dir', default=None, help='MNIST IDX folder (default: $MNIST_IDX_DIR)')
  args = parser.parse_args(argv)
  import os  # pylint: disable=import-outside-toplevel
  from mnist_flax.inference import ensemble  # pylint: disable=import-outside-toplevel
  idx_dir = args.idx_dir or os.environ.get('MNIST_IDX_DIR', '/work/shared/mnist')
  models = args.workdir or [None]
  classifiers = [ensemble.load_ensemble([m]) for m in models]
  names = [c.name for c in classifiers]
  print('| source | kind | n | ' + ' | '.join(f'{n}: accuracy (refused)' for n in names) + ' |')
  print('| --- | --- | --- | ' + ' | '.join('---' for _ in names) + ' |')
  totals = {name: [] for name in names}
  for source in args.sources.split(','):
    for kind in args.kinds.split(','):
      start = time.perf_counter()
      labels, images = make_set(source, kind, args.n, args.seed, idx_dir)
      if args.save:
        folder = pathlib.Path(args.save) / source / kind
        folder.mkdir(parents=True, exist_ok=True)
        for i, (label, data) in enumerate(zip(labels, images)):
          suffix = 'jpg' if data.startswith(JPEG_MAGIC) else 'png'
          (folder / f'{i:04d}_{label}.{suffix}').write_bytes(data)
      cells = []
      for name, classifier in zip(names, classifiers):
        result = evaluate(classifier, labels, images)
        totals[name].append(result['accuracy'])
        cells.append(f'{100 * result["accuracy"]:.1f}% ({result["refused"]})')
      print(f'| {source} | {kind} | {len(labels)} | ' + ' | '.join(cells) + f' |  '
            f'<!-- {time.perf_counter() - start:.0f}s -->', flush=True)
  print('| all | mean | | ' + ' | '.join(f'{100 * np.mean(totals[n]):.1f}%' for n in names) + ' |')
  return 0


if __name__ == '__main__':
  sys.exit(main())
