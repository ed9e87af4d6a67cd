"""`deepstack-serve` on loopback: real HTTP requests with the OpenAI client, answers equal to the pipeline's.

The server is started as its own process (the `deepstack-serve` command) on a free port for a tiny converted
checkpoint, once as converted (a remote-code repo: module files + `auto_map`) and once stripped of its code (a repo
only the installed package can load). Either way the server runs the installed package's classes: Transformers
prefers classes registered in the process over a repo's code, even with `trust_remote_code=True`. The independent
expectation is `pipeline("image-text-to-text")` on the same messages. Bad requests must get HTTP 400 with a reason,
and the server must answer the next good request.
"""

import base64
import http.server
import io
import json
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request

import pytest
import torch

from transformers.utils.import_utils import is_serve_available

if not is_serve_available():
    pytest.skip("serving needs FastAPI, Uvicorn and openai (pip install '.[serving]')", allow_module_level=True)

import openai  # noqa: E402
from PIL import Image, ImageDraw  # noqa: E402
from transformers import pipeline  # noqa: E402

import deepstack_hf  # noqa: E402,F401
from deepstack_hf.conversion import convert_checkpoint  # noqa: E402
from deepstack_hf.conversion.synthetic_checkpoint import build_synthetic_checkpoint  # noqa: E402

NEW_TOKENS = 6
QUESTION = "What is in the image?"
CONTEXT = 256  # a tiny context, so that four images do not fit


def picture(size=(150, 96)):
    image = Image.new("RGB", size, (230, 220, 200))
    draw = ImageDraw.Draw(image)
    draw.rectangle((10, 10, size[0] // 2, size[1] - 10), fill=(200, 40, 40))
    draw.ellipse((size[0] // 2, 5, size[0] - 5, size[1] // 2), fill=(40, 90, 200))
    return image


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def served_files(tmp_path_factory):
    """A tiny converted checkpoint, the picture as a file, and the same file behind a loopback HTTP server."""
    root = tmp_path_factory.mktemp("serve")
    synthetic = build_synthetic_checkpoint(
        root / "src", text_model_type="llama", hd=True, dtype=torch.float32, tokenizer_vocab_size=512,
        extra_config={"max_position_embeddings": CONTEXT},
    )
    model_dir = convert_checkpoint(synthetic.checkpoint, root / "tiny-serve", progress=False).output_dir
    image_path = root / "picture.png"
    picture().save(image_path)

    handler = lambda *args: http.server.SimpleHTTPRequestHandler(*args, directory=str(root))  # noqa: E731
    files = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=files.serve_forever, daemon=True).start()
    yield model_dir, image_path, f"http://127.0.0.1:{files.server_address[1]}/picture.png"
    files.shutdown()


@pytest.fixture(scope="module")
def expected(served_files) -> str:
    """The pipeline's answer for the picture and QUESTION, greedy, NEW_TOKENS tokens."""
    model_dir, image_path, _ = served_files
    pipe = pipeline("image-text-to-text", model=str(model_dir))
    content = [{"type": "image", "path": str(image_path)}, {"type": "text", "text": QUESTION}]
    messages = [{"role": "user", "content": content}]
    answer = pipe(text=messages, max_new_tokens=NEW_TOKENS, return_full_text=False)[0]["generated_text"]
    assert answer  # the tiny model says something
    return answer


def without_remote_code(repo, destination):
    """A copy of `repo` without its module files and `auto_map` (as converted before repos carried code)."""
    shutil.copytree(repo, destination, ignore=shutil.ignore_patterns("*.py"))
    for name in ("config.json", "processor_config.json", "tokenizer_config.json"):
        data = json.loads((destination / name).read_text())
        data.pop("auto_map", None)
        data.get("image_processor", {}).pop("auto_map", None)
        (destination / name).write_text(json.dumps(data, indent=2))
    return destination


def start_server(model_dir, home):
    """`deepstack-serve model_dir` on a free loopback port, once /health answers; its output goes to home/log."""
    port = free_port()
    with open(home / "log", "w") as log:  # the child keeps its own copy of the file descriptor
        process = subprocess.Popen(
            [sys.executable, "-m", "deepstack_hf.serving.cli", str(model_dir), "--host", "127.0.0.1",
             "--port", str(port), "--device", "cpu", "--dtype", "float32"],
            env=dict(os.environ, HF_HOME=str(home)), stdout=log, stderr=subprocess.STDOUT,
        )
    deadline = time.time() + 240
    while time.time() < deadline:
        if process.poll() is not None:
            output = (home / "log").read_text()[-4000:]
            raise AssertionError(f"deepstack-serve exited with {process.returncode}:\n{output}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as response:
                if response.status == 200:
                    return process, port
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            time.sleep(0.5)
    process.kill()
    raise AssertionError("deepstack-serve did not start in time")


@pytest.fixture(scope="module", params=["remote-code repo", "package-only repo"])
def server(request, served_files, tmp_path_factory):
    model_dir = served_files[0]
    if request.param == "package-only repo":
        model_dir = without_remote_code(model_dir, tmp_path_factory.mktemp("plain") / "tiny-serve")
    process, port = start_server(model_dir, tmp_path_factory.mktemp("hf_home"))
    client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="unused", max_retries=0, timeout=120)
    yield client, str(model_dir)
    process.terminate()
    process.wait(timeout=30)


def data_uri(image) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def ask(client, model, *image_urls, stream=False):
    content = [{"type": "image_url", "image_url": {"url": url}} for url in image_urls]
    messages = [{"role": "user", "content": content + [{"type": "text", "text": QUESTION}]}]
    response = client.chat.completions.create(
        model=model, messages=messages, max_tokens=NEW_TOKENS, temperature=0, stream=stream
    )
    if stream:
        return "".join(chunk.choices[0].delta.content or "" for chunk in response if chunk.choices)
    return response.choices[0].message.content


def test_answers_equal_the_pipeline_for_every_image_source(server, served_files, expected):
    client, model = server
    _, image_path, image_url = served_files
    assert ask(client, model, data_uri(picture())) == expected
    assert ask(client, model, str(image_path)) == expected
    assert ask(client, model, image_url) == expected
    assert ask(client, model, data_uri(picture()), stream=True) == expected


def refused(client, model, *image_urls) -> str:
    """The reason given with the HTTP 400 that a bad request must get."""
    with pytest.raises(openai.BadRequestError) as error:
        ask(client, model, *image_urls)
    assert error.value.status_code == 400
    return error.value.response.json()["detail"]


def test_bad_requests_get_400_and_the_server_keeps_serving(server, served_files, expected):
    client, model = server
    _, image_path, _ = served_files
    assert "pinned" in refused(client, "no-such/model", str(image_path))
    garbage = "data:image/png;base64," + base64.b64encode(b"not an image").decode()
    assert refused(client, model, garbage).startswith("Could not read image 1 (data:image/png;base64,")
    assert refused(client, model, str(image_path), str(image_path) + ".missing").startswith("Could not read image 2")
    assert f"context of {CONTEXT} tokens" in refused(client, model, *[str(image_path)] * 4)
    assert ask(client, model, str(image_path)) == expected
