"""`deepstack-serve` with a queue of one: HTTP 503 when it is full, then recovery; SIGTERM while generating.

The server serves a copy of the tiny repo without its module files (only the installed package can load it) and
has no `--allowed-local-media-path`, so local files are refused outright.
"""

import signal
import threading
import time

import pytest

pytest.importorskip("fastapi", reason="serving needs the `serving` extra (FastAPI, Uvicorn)")
pytest.importorskip("uvicorn", reason="serving needs the `serving` extra (FastAPI, Uvicorn)")

from serving_helpers import (  # noqa: E402
    ServerProcess,
    build_tiny_repo,
    chat,
    get,
    open_and_abandon,
    user_message,
    without_remote_code,
)

CONTEXT = 8192
EOS = 2
SHUTDOWN_TIMEOUT_S = 2
RUNAWAY = {"messages": user_message("Go on forever"), "logit_bias": {str(EOS): -100}, "stream": True}


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    root = tmp_path_factory.mktemp("serve-queue")
    repo = without_remote_code(build_tiny_repo(root, CONTEXT), root / "package-only")
    process = ServerProcess(
        repo, root / "server.log", "--max-queue", "1", "--shutdown-timeout", str(SHUTDOWN_TIMEOUT_S)
    )
    yield process
    process.stop()


def wait_for_pending(server, count, timeout_s=30):
    deadline = time.monotonic() + timeout_s
    while get(server.port, "/health")[1]["pending"] != count:
        assert time.monotonic() < deadline, f"pending never reached {count}"
        time.sleep(0.05)


def test_local_files_are_refused_without_an_allowed_folder(server, tmp_path):
    status, reply = chat(server.port, {"messages": user_message(("image", f"file://{tmp_path}/x.png"), "Hi")})
    assert status == 400 and "local files are not served" in reply["error"]["message"]


def test_a_full_queue_answers_503_at_once_and_recovers(server):
    runaway = threading.Thread(target=open_and_abandon, args=(server.port, RUNAWAY, 3.0, 2))
    runaway.start()
    wait_for_pending(server, 1)
    waiting = {}
    queued = threading.Thread(
        target=lambda: waiting.update(reply=chat(server.port, {"messages": user_message("Hi"), "max_tokens": 3}))
    )
    queued.start()
    wait_for_pending(server, 2)
    start = time.monotonic()
    status, reply = chat(server.port, {"messages": user_message("One too many"), "max_tokens": 3})
    assert status == 503 and "busy" in reply["error"]["message"], reply
    assert time.monotonic() - start < 2
    runaway.join()  # its client leaves: the waiting request runs
    queued.join(timeout=30)
    assert waiting["reply"][0] == 200, waiting
    assert chat(server.port, {"messages": user_message("Hi again"), "max_tokens": 3})[0] == 200


def test_sigterm_while_generating_shuts_down_cleanly(server):
    """SIGTERM during a runaway streamed generation: Uvicorn stops accepting, gives the request the shutdown
    timeout, then cancels it; the generation stops and the process ends."""
    events = []

    def consume():
        import http.client
        import json

        connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=60)
        connection.request("POST", "/v1/chat/completions", body=json.dumps(RUNAWAY))
        response = connection.getresponse()
        for line in response:
            if line.startswith(b"data: "):
                events.append(line)
        connection.close()

    reader = threading.Thread(target=consume)
    reader.start()
    wait_for_pending(server, 1)
    while len(events) < 3:
        time.sleep(0.05)
    start = time.monotonic()
    server.process.send_signal(signal.SIGTERM)
    code = server.process.wait(timeout=SHUTDOWN_TIMEOUT_S + 20)
    took = time.monotonic() - start
    reader.join(timeout=10)
    assert code in (0, -signal.SIGTERM) and took < SHUTDOWN_TIMEOUT_S + 5, (code, took)
    assert "Application shutdown complete." in server.log() and "Traceback" not in server.log(), server.log()
