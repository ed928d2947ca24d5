"""Writes the sample digit images of experiments/samples/ (each file name starts with its label).

    MNIST_IDX_DIR=/path/to/mnist python experiments/make_samples.py [--out experiments/samples]
    mnist-flax predict experiments/samples/*

They cover what people feed `mnist-flax predict`: an MNIST digit as is (28x28, white on black);
a phone photo of a digit on paper (MNIST test digit rendered dark on light, off-centre, 300+
pixels, uneven light, sensor noise, JPEG); digits drawn with a thick pen on a transparent
canvas (RGBA), as a palette GIF, as a 16-bit scan, and chalk-like (light on dark, RGB). The
drawn ones are made from pen strokes here, not taken from MNIST.
"""

from __future__ import annotations

import argparse
import pathlib

import numpy as np
from PIL import Image, ImageDraw

from mnist_flax.inference import export, preprocess

OUT = pathlib.Path(__file__).resolve().parent / 'samples'


def _first_of(labels: np.ndarray, digit: int, skip: int = 0) -> int:
  return int(np.flatnonzero(labels == digit)[skip])


def _strokes(size: tuple[int, int], lines, width: int, ink, paper, mode='RGB', ellipse=None):
  """A digit drawn as thick polylines (and an optional ellipse) with round joints."""
  image = Image.new(mode, size, paper)
  draw = ImageDraw.Draw(image)
  for line in lines:
    draw.line(line, fill=ink, width=width, joint='curve')
    for x, y in (line[0], line[-1]):  # round pen tips
      draw.ellipse((x - width / 2, y - width / 2, x + width / 2, y + width / 2), fill=ink)
  if ellipse:
    draw.ellipse(ellipse, outline=ink, width=width)
  return image


def make_samples(out: pathlib.Path = OUT) -> list[pathlib.Path]:
  out.mkdir(parents=True, exist_ok=True)
  images, labels = export.mnist_test_set()
  rng = np.random.default_rng(3)
  written = []

  def save(image: Image.Image, name: str, **kwargs):
    path = out / name
    image.save(path, **kwargs)
    written.append(path)

  save(Image.fromarray(images[_first_of(labels, 7)], 'L'), '7_mnist_28x28.png')
  save(preprocess.render_photo_like(images[_first_of(labels, 2)], rng, size=300, quality=80),
       '2_phone_photo.jpg', quality=92)
  save(preprocess.render_photo_like(images[_first_of(labels, 9, 1)], rng, size=240, quality=70),
       '9_phone_photo.jpg', quality=92)
  # Drawn with a pen: black on a transparent canvas (drawing apps), 200x260.
  save(_strokes((200, 260), [[(40, 40), (160, 40), (85, 225)]], 22, (0, 0, 0, 255),
                (255, 255, 255, 0), mode='RGBA'), '7_drawn_transparent.png')
  save(_strokes((220, 260), [], 20, (20, 20, 20, 255), (255, 255, 255, 0), mode='RGBA',
                ellipse=(55, 30, 165, 230)), '0_drawn_transparent.png')
  save(_strokes((240, 240), [[(150, 25), (40, 160), (190, 160)], [(150, 25), (150, 220)]], 18,
                (10, 10, 10), (240, 240, 235)).convert('P', palette=Image.Palette.ADAPTIVE,
                                                       colors=16), '4_drawn_palette.gif')
  # A 16-bit grayscale scan: dark ink on light paper at 16 bits per pixel.
  one = np.asarray(_strokes((160, 240), [[(60, 60), (95, 30), (95, 215)]], 16, 0, 255, mode='L'),
                   np.float32) / 255
  save(Image.fromarray(np.round((0.15 + 0.8 * one) * 65535).astype(np.uint16)), '1_scan_16bit.png')
  # Chalk on a blackboard: light strokes on dark green, RGB.
  save(_strokes((260, 240), [[(60, 60), (110, 30), (170, 45), (175, 100), (60, 205), (190, 205)]],
                20, (235, 235, 225), (30, 60, 40)), '2_chalk_rgb.png')
  return written


def main():
  parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  parser.add_argument('--out', default=str(OUT))
  args = parser.parse_args()
  for path in make_samples(pathlib.Path(args.out)):
    print(path)


if __name__ == '__main__':
  main()
