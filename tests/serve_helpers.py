"""A live `mnist-flax serve` for tests: a subprocess on a port of 127.0.0.1 that it picks itself
(`--port 0`: no race with other processes for a port chosen in advance)."""

import os
import pathlib
import re
import signal
import subprocess
import sys
import threading
import time

REPO = pathlib.Path(__file__).resolve().parent.parent
RUNNING = re.compile(r'Uvicorn running on http://127\.0\.0\.1:(\d+)')


class LiveServer:
  """The server process, its URL once healthy, and everything it printed (read as it comes)."""

  def __init__(self, *args, env=None, timeout=180):
    command = [sys.executable, '-m', 'mnist_flax.cli', 'serve', '--port', '0', *args]
    self.process = subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE,
                                    stderr=subprocess.STDOUT, text=True,
                                    env=dict(os.environ, **(env or {})))
    self.lines, self.url = [], None
    self._reader = threading.Thread(target=self._read, daemon=True)
    self._reader.start()
    self._wait_healthy(timeout)

  def _read(self):
    for line in self.process.stdout:
      self.lines.append(line)

  def output(self) -> str:
    return ''.join(self.lines)

  def _wait_healthy(self, timeout):
    import httpx  # pylint: disable=import-outside-toplevel  (the serve extra's client)
    deadline = time.time() + timeout
    while time.time() < deadline:
      if self.process.poll() is not None:
        self._reader.join(5)
        raise AssertionError(f'server exited with {self.process.returncode}:\n{self.output()}')
      found = self.url or next((RUNNING.search(l) for l in self.lines if RUNNING.search(l)), None)
      if found and not self.url:
        self.url = f'http://127.0.0.1:{found.group(1)}'
      if self.url:
        try:
          if httpx.get(self.url + '/healthz', timeout=2).status_code == 200:
            return
        except httpx.HTTPError:
          pass
      time.sleep(0.2)
    self.stop(signal.SIGKILL)
    raise AssertionError(f'server never became healthy:\n{self.output()}')

  def stop(self, signum=signal.SIGTERM, timeout=60) -> int:
    """Sends `signum`, waits for the exit; returns the exit code (output stays readable)."""
    if self.process.poll() is None:
      self.process.send_signal(signum)
    try:
      code = self.process.wait(timeout)
    except subprocess.TimeoutExpired:
      self.process.kill()
      code = self.process.wait()
    self._reader.join(10)
    return code
