"""A loopback HTTP server (127.0.0.1, in a thread) serving weights files for the download tests."""
from __future__ import annotations

import contextlib
import http.server
import threading
import time
from typing import Iterator


class _Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802 (http.server's name)
        self.server.requests.append(self.path)
        body, mode = self.server.files.get(self.path, (None, None))
        if body is None:
            self.send_error(404)
            return
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if mode in ("truncate", "stall"):  # the connection closes (or goes quiet for 3 s) halfway through
            self.wfile.write(body[: len(body) // 2])
            self.wfile.flush()
            if mode == "stall":
                time.sleep(3)
            self.close_connection = True
            return
        self.wfile.write(body)

    def log_message(self, *args) -> None:
        pass


@contextlib.contextmanager
def serve(files: dict[str, tuple[bytes, str]]) -> Iterator[http.server.ThreadingHTTPServer]:
    """Serve ``{"/path": (body, mode)}`` (mode ``"full"``, ``"truncate"`` or ``"stall"``) on 127.0.0.1; the
    server's ``url(path)`` gives a file's URL and ``requests`` the paths asked for."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    server.files, server.requests = files, []
    server.url = lambda path: f"http://127.0.0.1:{server.server_address[1]}{path}"
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)
