"""A local MNIST mirror on 127.0.0.1 for the download tests: good, corrupt, truncated or missing.

`Mirror(folder)` serves the files of `folder` from a thread; `mirror.mode` changes what it sends:

* `good`: the files as they are;
* `corrupt`: one byte flipped in the middle of every file (same length);
* `truncated`: the full Content-Length announced, half the body sent, connection closed;
* `missing`: 404 for everything.
"""

from __future__ import annotations

import http.server
import pathlib
import threading


class Mirror:

  def __init__(self, folder: str | pathlib.Path):
    self.folder = pathlib.Path(folder)
    self.mode = 'good'
    self.requests: list[str] = []
    mirror = self

    class Handler(http.server.BaseHTTPRequestHandler):

      def do_GET(self):  # noqa: N802 (http.server's name)
        mirror.requests.append(self.path)
        path = mirror.folder / self.path.lstrip('/').split('?')[0]
        if mirror.mode == 'missing' or not path.is_file() or '..' in self.path:
          self.send_error(404, 'not found')
          return
        body = path.read_bytes()
        if mirror.mode == 'corrupt':
          middle = len(body) // 2
          body = body[:middle] + bytes([body[middle] ^ 0xFF]) + body[middle + 1:]
        self.send_response(200)
        self.send_header('Content-Type', 'application/octet-stream')
        self.send_header('Content-Length', str(len(body)))
        self.end_headers()
        if mirror.mode == 'truncated':
          self.wfile.write(body[:len(body) // 2])
          self.wfile.flush()
          self.close_connection = True
          return
        self.wfile.write(body)

      def log_message(self, *args):  # keep the test output clean
        del args

    self._server = http.server.ThreadingHTTPServer(('127.0.0.1', 0), Handler)
    self.url = f'http://127.0.0.1:{self._server.server_address[1]}/'
    self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
    self._thread.start()

  def close(self):
    self._server.shutdown()
    self._server.server_close()
