"""Load benchmark of `mnist-flax serve` (issue #15): requests/s, latency percentiles, errors and
the server's memory, at 1, 8 and 64 concurrent clients, for canvas PNGs (what the page sends)
and phone-photo JPEGs, with batching on and off, in one run.

    python experiments/bench_serve.py                       # the issue's runs (~5 min)
    python experiments/bench_serve.py --quick               # a smoke run (~1 min)

Everything is on 127.0.0.1: the script starts the server (`python -m mnist_flax.cli serve`,
access log on, written to a temporary file), waits for /healthz, then drives it with a small
asyncio HTTP/1.1 client (keep-alive, one connection per client; a hand-written client because
a full-featured one would spend more CPU than the server on this 2-core machine). Each run
stops at its request count or its time limit, whichever comes first. Prints a markdown table.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import os
import pathlib
import signal
import socket
import subprocess
import sys
import tempfile
import time

import numpy as np
from PIL import Image

REPO = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / 'experiments'))
import handwriting  # noqa: E402  pylint: disable=wrong-import-position

BOUNDARY = 'mnistflaxbench'


def canvas_pngs(n: int, seed: int = 0) -> list[tuple[int, bytes]]:
  """(label, PNG) of pen drawings on a 280x280 canvas, RGBA as a browser's canvas.toBlob."""
  rng = np.random.default_rng(seed)
  out = []
  for i in range(n):
    grey = Image.open(io.BytesIO(handwriting.render('clean', handwriting.draw_strokes(i % 10, rng), rng)))
    buffer = io.BytesIO()
    grey.convert('RGBA').save(buffer, 'PNG')
    out.append((i % 10, buffer.getvalue()))
  return out


def phone_jpegs(n: int, seed: int = 0) -> list[tuple[int, bytes]]:
  """(label, JPEG) of photos of drawings on paper, 2016x1512 (a 3-megapixel upload), q 85."""
  rng = np.random.default_rng(seed)
  out = []
  for i in range(n):
    photo = Image.open(io.BytesIO(handwriting.render('photo', handwriting.draw_strokes(i % 10, rng), rng)))
    big = photo.resize((2016, 1512), Image.Resampling.BICUBIC)
    buffer = io.BytesIO()
    big.save(buffer, 'JPEG', quality=85)
    out.append((i % 10, buffer.getvalue()))
  return out


def request_bytes(payload: bytes, kind: str) -> bytes:
  """One POST /v1/predict with the image as a multipart `file` field, keep-alive."""
  body = (f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="file"; filename="d.{kind}"\r\n'
          f'Content-Type: image/{kind}\r\n\r\n').encode() + payload + f'\r\n--{BOUNDARY}--\r\n'.encode()
  head = (f'POST /v1/predict HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: multipart/form-data; '
          f'boundary={BOUNDARY}\r\nContent-Length: {len(body)}\r\n\r\n').encode()
  return head + body


async def _client(port: int, requests: list[tuple[int, bytes]], state: dict):
  reader, writer = await asyncio.open_connection('127.0.0.1', port)
  try:
    while state['next'] < state['total'] and time.perf_counter() < state['deadline']:
      label, data = requests[state['next'] % len(requests)]
      state['next'] += 1
      start = time.perf_counter()
      writer.write(data)
      head = await reader.readuntil(b'\r\n\r\n')
      length = int(next(line.split(b':')[1] for line in head.split(b'\r\n')
                        if line.lower().startswith(b'content-length')))
      body = await reader.readexactly(length)
      state['latencies'].append(time.perf_counter() - start)
      at = body.find(b'"label":') + len(b'"label":')  # the first is the prediction's own
      if not head.startswith(b'HTTP/1.1 200'):
        state['errors'] += 1
      elif body[at:at + 1] == str(label).encode():
        state['correct'] += 1
  except (ConnectionError, asyncio.IncompleteReadError):
    state['errors'] += 1
  finally:
    writer.close()


async def drive(port: int, requests, clients: int, total: int, seconds: float) -> dict:
  state = {'next': 0, 'total': total, 'deadline': time.perf_counter() + seconds,
           'latencies': [], 'errors': 0, 'correct': 0}
  start = time.perf_counter()
  await asyncio.gather(*[_client(port, requests, state) for _ in range(clients)])
  elapsed = time.perf_counter() - start
  lat = np.asarray(state['latencies']) * 1000
  done = len(lat)
  return {'requests': done, 'seconds': elapsed, 'rps': done / elapsed if elapsed else 0.0,
          'p50': np.percentile(lat, 50) if done else float('nan'),
          'p95': np.percentile(lat, 95) if done else float('nan'),
          'p99': np.percentile(lat, 99) if done else float('nan'),
          'errors': state['errors'], 'accuracy': state['correct'] / max(done, 1)}


def rss_mb(pid: int) -> float:
  for line in pathlib.Path(f'/proc/{pid}/status').read_text().splitlines():
    if line.startswith('VmRSS:'):
      return int(line.split()[1]) / 1024
  return float('nan')


def batch_stats(port: int) -> dict:
  import http.client  # pylint: disable=import-outside-toplevel
  import json  # pylint: disable=import-outside-toplevel
  connection = http.client.HTTPConnection('127.0.0.1', port, timeout=10)
  connection.request('GET', '/v1/model')
  return json.loads(connection.getresponse().read())['batching']['stats']


def free_port() -> int:
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    return s.getsockname()[1]


def start_server(extra: list[str], log) -> tuple[subprocess.Popen, int]:
  port = free_port()
  process = subprocess.Popen([sys.executable, '-m', 'mnist_flax.cli', 'serve', '--port', str(port),
                              *extra], cwd=REPO, stdout=log, stderr=subprocess.STDOUT)
  import http.client  # pylint: disable=import-outside-toplevel
  deadline = time.time() + 180
  while time.time() < deadline:
    if process.poll() is not None:
      raise SystemExit(f'server exited with {process.returncode}; see {log.name}')
    try:
      connection = http.client.HTTPConnection('127.0.0.1', port, timeout=2)
      connection.request('GET', '/healthz')
      if connection.getresponse().status == 200:
        return process, port
    except OSError:
      pass
    time.sleep(0.2)
  process.kill()
  raise SystemExit('server never became healthy')


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  parser.add_argument('--quick', action='store_true', help='few requests per run (a smoke run)')
  parser.add_argument('--seconds', type=float, default=60.0, help='time limit of each run')
  parser.add_argument('--clients', default='1,8,64')
  parser.add_argument('--inputs', default='png,jpeg', help='png (canvas), jpeg (phone photos)')
  parser.add_argument('--batching', default='on,off')
  parser.add_argument('--server-args', default='', help='extra `mnist-flax serve` flags')
  args = parser.parse_args(argv)
  scale = 0.05 if args.quick else 1.0
  # Requests per run: 20,000 for the headline (64 clients, canvas PNGs, batching on).
  counts = {('png', 1): 1000, ('png', 8): 4000, ('png', 64): 20000,
            ('jpeg', 1): 200, ('jpeg', 8): 600, ('jpeg', 64): 1500}
  payloads = {'png': [(label, request_bytes(data, 'png')) for label, data in canvas_pngs(64)],
              'jpeg': [(label, request_bytes(data, 'jpeg')) for label, data in phone_jpegs(16)]}
  sizes = {kind: np.mean([len(r) for _, r in reqs]) / 1024 for kind, reqs in payloads.items()}
  print(f'# bench_serve: {time.strftime("%Y-%m-%d %H:%M:%S")}, {os.cpu_count()} CPUs, load '
        f'average {os.getloadavg()[0]:.1f}; canvas PNG {sizes["png"]:.0f} KiB, phone JPEG '
        f'{sizes["jpeg"]:.0f} KiB per request')
  print('\n| batching | input | clients | requests | req/s | p50 ms | p95 ms | p99 ms | errors | '
        'label right | server RSS MB before -> after | images per predict call |')
  print('| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |')
  for batching in (b == 'on' for b in args.batching.split(',')):
    with tempfile.NamedTemporaryFile('w', prefix='bench_serve_', suffix='.log', delete=False) as log:
      flags = args.server_args.split() + ([] if batching else ['--no-batching'])
      process, port = start_server(flags, log)
      try:
        asyncio.run(drive(port, payloads['png'], 8, 200, 30))  # first-touch warm-up, not counted
        for kind in args.inputs.split(','):
          for clients in (int(c) for c in args.clients.split(',')):
            before, stats = rss_mb(process.pid), batch_stats(port)
            total = max(clients, int(counts[(kind, clients)] * scale))
            r = asyncio.run(drive(port, payloads[kind], clients, total, args.seconds))
            after = batch_stats(port)
            calls = after['calls'] - stats['calls']
            mean_batch = (after['images'] - stats['images']) / max(calls, 1)
            print(f'| {"on" if batching else "off"} | {"canvas PNG" if kind == "png" else "phone JPEG"} '
                  f'| {clients} | {r["requests"]} | {r["rps"]:.0f} | {r["p50"]:.1f} | {r["p95"]:.1f} '
                  f'| {r["p99"]:.1f} | {r["errors"]} | {100 * r["accuracy"]:.1f}% | '
                  f'{before:.0f} -> {rss_mb(process.pid):.0f} | {mean_batch:.1f} |', flush=True)
      finally:
        process.send_signal(signal.SIGTERM)
        code = process.wait(60)
      print(f'<!-- server {"with" if batching else "without"} batching exited {code}; log '
            f'{log.name} -->', flush=True)
  return 0


if __name__ == '__main__':
  sys.exit(main())
