"""A loopback (127.0.0.1) HTTP server for the download tests: a body, a trickle, an oversized answer, redirects."""

import contextlib
import io
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
from PIL import Image

BODY = bytes(range(256)) * 40  # 10240 bytes


def png_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


PICTURE = Image.fromarray(np.random.RandomState(3).randint(0, 256, (6, 9, 3)).astype(np.uint8))  # 9x6 RGB
PNG = png_bytes(PICTURE)  # well under 1000 bytes
BIG_PNG = png_bytes(Image.fromarray(np.random.RandomState(4).randint(0, 256, (64, 64, 3)).astype(np.uint8)))


class _Handler(BaseHTTPRequestHandler):
    def log_message(self, *args):
        pass

    def do_GET(self):
        if self.path == "/body":
            self._send(BODY)
        elif self.path == "/picture.png":
            self._send(PNG)
        elif self.path == "/big.png":  # a valid image larger than a small byte limit, announced by Content-Length
            self._send(BIG_PNG)
        elif self.path in ("/no-length", "/big-no-length.png"):  # no Content-Length: the limit must hold while reading
            self.send_response(200)
            self.send_header("Connection", "close")
            self.end_headers()
            self.wfile.write(BODY if self.path == "/no-length" else BIG_PNG)
            self.close_connection = True
        elif self.path in ("/trickle", "/trickle.png"):  # a byte every 0.1 s for up to 20 s: each read succeeds
            self.send_response(200)
            self.send_header("Content-Length", "200")
            self.end_headers()
            try:
                for byte in (PNG + bytes(200))[:200]:
                    self.wfile.write(bytes([byte]))
                    self.wfile.flush()
                    time.sleep(0.1)
            except OSError:
                pass
        elif self.path == "/redirect":
            self._redirect("/body")
        elif self.path == "/redirect-away":
            self._redirect("http://elsewhere.invalid/body")
        else:
            self.send_error(404)

    def _redirect(self, location: str):
        self.send_response(302)
        self.send_header("Location", location)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def _send(self, body: bytes):
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


@contextlib.contextmanager
def serving():
    """The server's base URL `http://127.0.0.1:PORT` while the block runs."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
