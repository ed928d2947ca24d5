"""A live `mnist-flax serve` for tests: a subprocess on a free port of 127.0.0.1."""

import os
import pathlib
import socket
import subprocess
import sys
import time

REPO = pathlib.Path(__file__).resolve().parent.parent


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    return s.getsockname()[1]


def start_server(*args, env=None):
  """`mnist-flax serve` in a subprocess on a free port of 127.0.0.1; returns (process, url)."""
  port = _free_port()
  command = [sys.executable, '-m', 'mnist_flax.cli', 'serve', '--port', str(port), *args]
  process = subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                             text=True, env=dict(os.environ, **(env or {})))
  url = f'http://127.0.0.1:{port}'
  import httpx  # pylint: disable=import-outside-toplevel  (the serve extra's client)
  deadline = time.time() + 180
  while time.time() < deadline:
    if process.poll() is not None:
      raise AssertionError(f'server exited: {process.stdout.read()}')
    try:
      if httpx.get(url + '/healthz', timeout=2).status_code == 200:
        return process, url
    except httpx.HTTPError:
      pass
    time.sleep(0.2)
  process.kill()
  raise AssertionError('server never became healthy')
