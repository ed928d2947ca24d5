"""Digits drawn on the page, through a real browser: the end-to-end accuracy of `mnist-flax serve`.

Starts the server, opens the page in headless Chromium (Selenium), and draws each digit of
`handwriting.stroke_paths` (varied templates, slant, squeeze, jitter) with pen pointer events,
at a random size (45-95% of the pad) and position, then reads the label the page settles on.
The page's own pen width is used (as a person's drawings have). Nothing is saved.

    python experiments/browser_eval.py --n 200 [--server-args "--workdir DIR"]
"""

from __future__ import annotations

import argparse
import pathlib
import shutil
import signal
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
import bench_serve  # noqa: E402  pylint: disable=wrong-import-position
import handwriting  # noqa: E402  pylint: disable=wrong-import-position


def browser():
  from selenium import webdriver  # pylint: disable=import-outside-toplevel
  options = webdriver.ChromeOptions()
  options.binary_location = shutil.which('chromium')
  profile = tempfile.mkdtemp(prefix='mnist-flax-eval-')
  for flag in ('--headless=new', '--no-sandbox', '--disable-gpu', '--disable-quic',
               '--no-first-run', '--disable-background-networking', '--disable-component-update',
               '--disable-sync', '--disable-dev-shm-usage', f'--user-data-dir={profile}',
               '--window-size=900,760'):
    options.add_argument(flag)
  service = webdriver.ChromeService(executable_path=shutil.which('chromedriver'))
  return webdriver.Chrome(options=options, service=service), profile


def draw(driver, pad, lines, rng):
  """The strokes at a random size and place on the pad, as pen pointer events."""
  from selenium.webdriver.common.actions.action_builder import ActionBuilder  # pylint: disable=import-outside-toplevel
  from selenium.webdriver.common.actions.pointer_input import PointerInput  # pylint: disable=import-outside-toplevel
  size = rng.uniform(0.45, 0.95)
  offset = rng.uniform(0, 1 - size, 2)
  width, height = pad.size['width'], pad.size['height']
  builder = ActionBuilder(driver, mouse=PointerInput('pen', 'pen'), duration=10)
  for line in lines:
    points = (0.5 + (line - 0.5) / 0.8) * size + offset  # the drawing's box -> its place
    for i, (x, y) in enumerate(points[::2] if len(points) > 24 else points):
      builder.pointer_action.move_to(pad, int((x - 0.5) * width), int((y - 0.5) * height))
      if i == 0:
        builder.pointer_action.pointer_down()
    builder.pointer_action.move_to(pad, int((points[-1][0] - 0.5) * width),
                                   int((points[-1][1] - 0.5) * height))
    builder.pointer_action.pointer_up()
  builder.perform()


def settled_label(driver, timeout=15) -> str:
  """The label once nothing drawn waits for an answer (the page's data-idle)."""
  from selenium.webdriver.common.by import By  # pylint: disable=import-outside-toplevel
  from selenium.webdriver.support.ui import WebDriverWait  # pylint: disable=import-outside-toplevel
  body = driver.find_element(By.TAG_NAME, 'body')
  WebDriverWait(driver, timeout).until(lambda d: body.get_attribute('data-idle') == '1')
  return driver.find_element(By.ID, 'label').get_attribute('data-label')


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  parser.add_argument('--n', type=int, default=200)
  parser.add_argument('--seed', type=int, default=0)
  parser.add_argument('--server-args', default='')
  args = parser.parse_args(argv)
  from selenium.webdriver.common.by import By  # pylint: disable=import-outside-toplevel
  rng = np.random.default_rng(args.seed)
  with tempfile.NamedTemporaryFile('w', suffix='.log', delete=False) as log:
    process, port = bench_serve.start_server(args.server_args.split(), log)
  driver, profile = browser()
  right, firsts, confusions = 0, [], []
  start = time.perf_counter()
  try:
    driver.get(f'http://127.0.0.1:{port}/')
    pad = driver.find_element(By.ID, 'pad')
    for i in range(args.n):
      digit = i % 10
      driver.find_element(By.ID, 'clear').click()
      lines, _ = handwriting.stroke_paths(digit, rng)
      draw(driver, pad, lines, rng)
      label = settled_label(driver)
      first = driver.find_element(By.TAG_NAME, 'body').get_attribute('data-first-prediction-ms')
      firsts.append(int(first) if first else np.nan)
      right += label == str(digit)
      if label != str(digit):
        confusions.append(f'{digit}->{label or "refused"}')
  finally:
    driver.quit()
    shutil.rmtree(profile, ignore_errors=True)
    process.send_signal(signal.SIGTERM)
    process.wait(60)
  print(f'browser-drawn digits: {right}/{args.n} right ({100 * right / args.n:.1f}%), '
        f'{time.perf_counter() - start:.0f} s; first prediction after the first stroke: median '
        f'{np.nanmedian(firsts):.0f} ms, max {np.nanmax(firsts):.0f} ms; mistakes: '
        f'{" ".join(confusions) or "none"}')
  return 0


if __name__ == '__main__':
  sys.exit(main())
