"""Loopback helpers for the `deepstack-serve` tests and `benchmarks/serving_load.py`.

* [`build_tiny_repo`]: a tiny converted DeepStack repo (random weights, HD layout) with a chosen context;
* [`ServerProcess`]: `deepstack-serve` as a child process on a free 127.0.0.1 port, its RSS, SIGTERM;
* [`chat`], [`stream_chat`], [`get`], [`reply_text`]: a plain HTTP client (the standard library's `http.client`);
* [`pil_message`], [`generate_alone`]: the expected answer, `model.generate` on the processor's chat-template inputs
  for one request alone;
* [`MediaServer`]: a loopback HTTP server for a folder, plus hostile routes: `/trickle` (a byte every
  `trickle_interval_s`), `/silent` (accepts, never answers), `/redirect` (302 to `/picture.png`);
* [`without_remote_code`]: a repo stripped of its module files;
* [`png_header`]: a PNG whose header says any size but whose pixels cannot be decoded, [`picture`], [`data_uri`].
"""

from __future__ import annotations

import base64
import http.client
import http.server
import io
import json
import os
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
import zlib
from pathlib import Path

LOOPBACK = "127.0.0.1"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((LOOPBACK, 0))
        return sock.getsockname()[1]


def build_tiny_repo(root: Path, context: int) -> Path:
    """A tiny converted repo (Llama decoder, HD layout, 512-piece tokenizer) whose context is `context` tokens."""
    import torch

    from deepstack_hf.conversion import convert_checkpoint
    from deepstack_hf.testing_utils.synthetic_checkpoint import build_synthetic_checkpoint

    synthetic = build_synthetic_checkpoint(
        root / "src", text_model_type="llama", hd=True, dtype=torch.float32, tokenizer_vocab_size=512,
        extra_config={"max_position_embeddings": context},
    )  # fmt: skip
    return convert_checkpoint(synthetic.checkpoint, root / "tiny-serve", progress=False).output_dir


def picture(size=(150, 96), color=(200, 40, 40)):
    from PIL import Image, ImageDraw

    image = Image.new("RGB", size, (230, 220, 200))
    draw = ImageDraw.Draw(image)
    draw.rectangle((10, 10, size[0] // 2, size[1] - 10), fill=color)
    draw.ellipse((size[0] // 2, 5, size[0] - 5, size[1] // 2), fill=(40, 90, 200))
    return image


def png_bytes(image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def data_uri(data: bytes, mime: str = "image/png") -> str:
    return f"data:{mime};base64," + base64.b64encode(data).decode()


def png_header(width: int, height: int) -> bytes:
    """A PNG that PIL opens as `width` x `height` RGB but whose pixel data is cut short: decoding it fails."""

    def chunk(kind: bytes, payload: bytes) -> bytes:
        return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\x00" * 16)) + chunk(b"IEND", b"")
    )


# ---------------------------------------------------------------------------------------------------- the server
class ServerProcess:
    """`deepstack-serve MODEL ARGS` (`python -m deepstack_hf.integrations.serving.cli`) on a free loopback port."""

    def __init__(self, model_dir: Path, log_path: Path, *args: str, start_timeout_s: float = 240):
        self.port, self.log_path = free_port(), log_path
        command = [
            sys.executable, "-m", "deepstack_hf.integrations.serving.cli", str(model_dir), "--host", LOOPBACK,
            "--port", str(self.port), "--device", "cpu", "--dtype", "float32", "--log-level", "info", *args,
        ]  # fmt: skip
        env = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1"))
        with open(log_path, "w") as log:  # the child keeps its own copy of the descriptor
            self.process = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + start_timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise AssertionError(f"deepstack-serve exited with {self.process.returncode}:\n{self.log()}")
            try:
                if get(self.port, "/health", timeout=2)[0] == 200:
                    return
            except OSError:
                time.sleep(0.3)
        self.process.kill()
        raise AssertionError(f"deepstack-serve did not start in time:\n{self.log()}")

    def log(self) -> str:
        return Path(self.log_path).read_text()[-6000:]

    def rss_bytes(self) -> int:
        """The server's resident memory now (Linux `/proc`)."""
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
        raise AssertionError("no VmRSS")

    def stop(self, timeout_s: float = 60) -> int:
        """SIGTERM, then wait; the exit code."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                return self.process.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
                raise
        return self.process.returncode


# ---------------------------------------------------------------------------------------------------- the client
def _connection(port: int, timeout: float) -> http.client.HTTPConnection:
    return http.client.HTTPConnection(LOOPBACK, port, timeout=timeout)


def get(port: int, path: str, timeout: float = 30) -> tuple[int, object]:
    connection = _connection(port, timeout)
    try:
        connection.request("GET", path)
        response = connection.getresponse()
        return response.status, _decode(response.read())
    finally:
        connection.close()


def _decode(body: bytes):
    try:
        return json.loads(body)
    except ValueError:
        return body.decode(errors="replace")


def post(port: int, path: str, body: bytes, timeout: float = 120) -> tuple[int, object, int]:
    """(status, decoded body, body size in bytes) of a POST of raw bytes."""
    connection = _connection(port, timeout)
    try:
        connection.request("POST", path, body=body, headers={"Content-Type": "application/json"})
        response = connection.getresponse()
        raw = response.read()
        return response.status, _decode(raw), len(raw)
    finally:
        connection.close()


def chat(port: int, body: dict, timeout: float = 120) -> tuple[int, dict]:
    """(status, JSON reply) of a chat completion."""
    status, reply, _ = post(port, "/v1/chat/completions", json.dumps(body).encode(), timeout)
    return status, reply


def answer(reply: dict) -> str:
    return reply["choices"][0]["message"]["content"]


def stream_chat(port: int, body: dict, timeout: float = 120) -> tuple[int, list[dict], str]:
    """(status, the JSON events before `[DONE]`, the content they carry) of a streamed chat completion."""
    connection = _connection(port, timeout)
    try:
        connection.request(
            "POST", "/v1/chat/completions", body=json.dumps({**body, "stream": True}),
            headers={"Content-Type": "application/json"},
        )  # fmt: skip
        response = connection.getresponse()
        if response.status != 200:
            return response.status, [_decode(response.read())], ""
        events, done = [], False
        for line in response:
            line = line.decode().strip()
            if line == "data: [DONE]":
                done = True
                break
            if line.startswith("data: "):
                events.append(json.loads(line[len("data: ") :]))
        assert done, "the stream ended without [DONE]"
        text = "".join(e["choices"][0]["delta"].get("content") or "" for e in events if e.get("choices"))
        return 200, events, text
    finally:
        connection.close()


def reply_text(port: int, body: dict) -> tuple[int, object]:
    """(status, answer text) of a chat completion, streamed or not as `body` says (the error reply if not 200)."""
    if body.get("stream"):
        status, events, text = stream_chat(port, body)
        return status, text if status == 200 else events[0]
    status, reply = chat(port, body)
    return status, answer(reply) if status == 200 else reply


def timed(function, *args, **kwargs):
    """(result, seconds) of a call."""
    start = time.monotonic()
    result = function(*args, **kwargs)
    return result, time.monotonic() - start


def open_and_abandon(port: int, body: dict, after_s: float, read_events: int = 0) -> None:
    """Send a chat request, (streamed: read `read_events` lines), wait `after_s`, and close the connection."""
    connection = _connection(port, 60)
    connection.request(
        "POST", "/v1/chat/completions", body=json.dumps(body), headers={"Content-Type": "application/json"}
    )
    if read_events:
        response = connection.getresponse()
        assert response.status == 200, response.read()
        seen = 0
        while seen < read_events:
            if response.fp.readline().startswith(b"data: "):
                seen += 1
    time.sleep(after_s)
    connection.sock.shutdown(socket.SHUT_RDWR)
    connection.close()


def user_message(*parts) -> list[dict]:
    """One user message from strings (text parts) and `("image", url)` / `("video", url)` pairs."""
    content = []
    for part in parts:
        if isinstance(part, str):
            content.append({"type": "text", "text": part})
        else:
            kind, url = part
            content.append({"type": f"{kind}_url", f"{kind}_url": {"url": url}})
    return [{"role": "user", "content": content}]


# ---------------------------------------------------------------------------------------------------- expectations
def pil_message(*parts) -> list[dict]:
    """One user message for the processor: strings are text parts, PIL images are image parts."""
    content = [{"type": "text", "text": p} if isinstance(p, str) else {"type": "image", "image": p} for p in parts]
    return [{"role": "user", "content": content}]


def generate_alone(model, processor, messages, max_new_tokens, seed=None, **generate_kwargs) -> tuple[str, int]:
    """(answer, prompt tokens) of `model.generate` on the processor's chat-template inputs for `messages` alone
    (greedy unless `generate_kwargs` say otherwise; `seed` seeds torch first)."""
    import torch

    inputs = processor.apply_chat_template(
        messages, add_generation_prompt=True, tokenize=True, return_dict=True, return_tensors="pt"
    )
    if seed is not None:
        torch.manual_seed(seed)
    generate_kwargs.setdefault("do_sample", False)
    output = model.generate(**inputs, max_new_tokens=max_new_tokens, **generate_kwargs)
    prompt = inputs["input_ids"].shape[1]
    return processor.tokenizer.decode(output[0, prompt:], skip_special_tokens=True), prompt


# ---------------------------------------------------------------------------------------------------- media server
class MediaServer:
    """A loopback HTTP server for `folder`, with the hostile routes of the module docstring."""

    def __init__(self, folder: Path, trickle_interval_s: float = 0.3):
        outer = self

        class Handler(http.server.SimpleHTTPRequestHandler):
            def __init__(self, *args, **kwargs):
                super().__init__(*args, directory=str(folder), **kwargs)

            def log_message(self, *args):
                pass

            def do_GET(self):
                if self.path == "/trickle":
                    self.send_response(200)
                    self.send_header("Content-Type", "image/png")
                    self.send_header("Content-Length", "100000")
                    self.end_headers()
                    try:
                        while not outer.stopped.is_set():
                            self.wfile.write(b"\x89")
                            self.wfile.flush()
                            time.sleep(trickle_interval_s)
                    except OSError:
                        pass
                elif self.path == "/silent":
                    outer.stopped.wait(60)
                elif self.path == "/redirect":
                    self.send_response(302)
                    self.send_header("Location", "/picture.png")
                    self.end_headers()
                else:
                    super().do_GET()

        self.stopped = threading.Event()
        self.server = http.server.ThreadingHTTPServer((LOOPBACK, 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def url(self, path: str, host: str = LOOPBACK) -> str:
        return f"http://{host}:{self.port}{path}"

    def close(self) -> None:
        self.stopped.set()
        self.server.shutdown()
        self.server.server_close()


def without_remote_code(repo: Path, destination: Path) -> Path:
    """A copy of `repo` without its module files and `auto_map` (a repo only the installed package can load)."""
    import shutil

    shutil.copytree(repo, destination, ignore=shutil.ignore_patterns("*.py"))
    for name in ("config.json", "processor_config.json", "tokenizer_config.json"):
        data = json.loads((destination / name).read_text())
        data.pop("auto_map", None)
        data.get("image_processor", {}).pop("auto_map", None)
        (destination / name).write_text(json.dumps(data, indent=2))
    return destination
