"""Load and hostile-client figures of `deepstack-serve` on loopback, with a tiny random model (CPU).

    python benchmarks/serving_load.py                 # 32 concurrent mixed requests, 200 for memory, all probes
    python benchmarks/serving_load.py --json out.json

One server process (tiny converted checkpoint, `--context` tokens) and a loopback media server. Printed:

* load: 32 mixed requests (text, one or two images by data URI / file:// / http, streamed or not) sent at once,
  each checked against `model.generate` on the same request alone; wall time against the same requests one by one;
* memory: the server's RSS after a warm-up and after `--memory-requests` more requests;
* trickle: while one request's image URL sends a byte every 0.3 s, the latency of `/health` and of a small request
  (against the same small request on an idle server), and when the hostile request gets its 400;
* runaway: a request with its end token banned and no `max_tokens` (it would fill the context); its client leaves
  after 0.5 s: how long until the generation has stopped, how many tokens it made, how long the next request takes,
  and how long the whole runaway would have taken (from the decode rate);
* queue: the latency of the 503 when the queue is full (a second server with `--max-queue 1`), and how long a
  SIGTERM takes to stop that server in the middle of a runaway generation.
"""

from __future__ import annotations

import argparse
import json
import re
import signal
import statistics
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from serving_helpers import (  # noqa: E402
    MediaServer,
    ServerProcess,
    build_tiny_repo,
    chat,
    data_uri,
    generate_alone,
    get,
    open_and_abandon,
    picture,
    pil_message,
    png_bytes,
    reply_text,
    timed,
    user_message,
)

EOS = 2
QUESTION = "What is in the image?"


def mixed(media: Path, http: MediaServer):
    """(request body, processor messages, max tokens) for eight kinds of request."""
    image, other = picture(), picture((80, 120), (30, 160, 60))
    uri, other_file = data_uri(png_bytes(image)), f"file://{media / 'other.png'}"

    return [
        ({"messages": user_message("Tell me a story"), "max_tokens": 16}, pil_message("Tell me a story"), 16),
        ({"messages": user_message(("image", uri), QUESTION), "max_tokens": 12}, pil_message(image, QUESTION), 12),
        ({"messages": user_message(("image", http.url("/picture.png")), ("image", other_file), "Compare."),
          "max_tokens": 12}, pil_message(image, other, "Compare."), 12),
        ({"messages": user_message(("image", other_file), "Describe."), "max_tokens": 16, "stream": True},
         pil_message(other, "Describe."), 16),
        ({"messages": user_message("Hi"), "max_tokens": 8, "stream": True}, pil_message("Hi"), 8),
        ({"messages": user_message(("image", uri), "Again?"), "max_tokens": 4}, pil_message(image, "Again?"), 4),
        ({"messages": user_message("Long answer please"), "max_tokens": 32}, pil_message("Long answer please"), 32),
        ({"messages": user_message(("image", http.url("/other.png")), "Colour?"), "max_tokens": 8, "stream": True},
         pil_message(other, "Colour?"), 8),
    ]  # fmt: skip


def expected_answers(repo: Path, kinds) -> list[str]:
    import torch
    from transformers import AutoModelForImageTextToText, AutoProcessor

    import deepstack_hf  # noqa: F401

    model = AutoModelForImageTextToText.from_pretrained(repo, dtype=torch.float32).eval()
    processor = AutoProcessor.from_pretrained(repo)
    return [generate_alone(model, processor, messages, tokens)[0] for _, messages, tokens in kinds]


def load_figures(port, kinds, answers, count) -> dict:
    bodies = [kinds[i % len(kinds)][0] for i in range(count)]
    wants = [answers[i % len(kinds)] for i in range(count)]
    _, sequential_s = timed(lambda: [reply_text(port, body) for body in bodies])
    latencies = []

    def one(body):
        result, took = timed(reply_text, port, body)
        latencies.append(took)
        return result

    with ThreadPoolExecutor(count) as pool:
        results, concurrent_s = timed(lambda: list(pool.map(one, bodies)))
    correct = sum(status == 200 and text == want for (status, text), want in zip(results, wants))
    return {
        "requests": count,
        "correct": correct,
        "concurrent_wall_s": round(concurrent_s, 2),
        "sequential_wall_s": round(sequential_s, 2),
        "latency_median_s": round(statistics.median(latencies), 3),
        "latency_max_s": round(max(latencies), 3),
    }


def memory_figures(server, kinds, count) -> dict:
    bodies = [{**kinds[i % len(kinds)][0], "max_tokens": 2} for i in range(count)]
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda body: reply_text(server.port, body), bodies[:40]))
        before = server.rss_bytes()
        list(pool.map(lambda body: reply_text(server.port, body), bodies))
    after = server.rss_bytes()
    return {"requests": count, "rss_before_mib": round(before / 2**20, 1), "rss_after_mib": round(after / 2**20, 1),
            "growth_mib": round((after - before) / 2**20, 1)}  # fmt: skip


def trickle_figures(port, http, media_timeout_s) -> dict:
    small = {"messages": user_message("Hi"), "max_tokens": 4}
    idle = statistics.median(timed(chat, port, small)[1] for _ in range(5))
    idle_health = statistics.median(timed(get, port, "/health")[1] for _ in range(5))
    hostile = {}

    def send():
        hostile["result"] = timed(chat, port, {"messages": user_message(("image", http.url("/trickle")), "x")})

    thread = threading.Thread(target=send)
    thread.start()
    time.sleep(0.3)
    health = [timed(get, port, "/health")[1] for _ in range(10)]
    busy = [timed(chat, port, small)[1] for _ in range(3)]
    thread.join()
    (status, reply), took = hostile["result"]
    return {
        "media_timeout_s": media_timeout_s,
        "health_idle_median_s": round(idle_health, 4),
        "health_during_max_s": round(max(health), 4),
        "small_request_idle_median_s": round(idle, 3),
        "small_request_during_max_s": round(max(busy), 3),
        "hostile_status": status,
        "hostile_answered_after_s": round(took, 2),
    }


def runaway_figures(server, context) -> dict:
    rate_body = {"messages": user_message("Count"), "logit_bias": {str(EOS): -100}, "max_tokens": 400}
    _, rate_s = timed(chat, server.port, rate_body)
    body = {"messages": user_message("Go on forever"), "logit_bias": {str(EOS): -100}}
    open_and_abandon(server.port, body, after_s=0.5)
    start = time.monotonic()
    while get(server.port, "/health")[1]["pending"]:
        time.sleep(0.01)
    stopped_s = time.monotonic() - start
    _, next_s = timed(chat, server.port, {"messages": user_message("Hi"), "max_tokens": 4})
    made = [int(n) for n in re.findall(r"Generation cancelled after (\d+) tokens", server.log())][-1]
    return {
        "stopped_after_disconnect_s": round(stopped_s, 3),
        "tokens_before_stop": made,
        "next_request_s": round(next_s, 3),
        "uncancelled_estimate_s": round(rate_s / 400 * (context - 30), 1),
    }


def queue_figures(repo, log_dir) -> dict:
    server = ServerProcess(repo, log_dir / "queue.log", "--max-queue", "1", "--shutdown-timeout", "2")
    runaway = {"messages": user_message("Go on forever"), "logit_bias": {str(EOS): -100}, "stream": True}
    leaving = threading.Thread(target=open_and_abandon, args=(server.port, runaway, 4.0, 2))
    leaving.start()
    waiting = threading.Thread(target=chat, args=(server.port, {"messages": user_message("Hi"), "max_tokens": 4}))
    while get(server.port, "/health")[1]["pending"] < 1:
        time.sleep(0.02)
    waiting.start()
    while get(server.port, "/health")[1]["pending"] < 2:
        time.sleep(0.02)
    (status, _), busy_s = timed(chat, server.port, {"messages": user_message("x"), "max_tokens": 4})
    leaving.join()
    waiting.join()
    held = threading.Thread(target=open_and_abandon, args=(server.port, runaway, 30.0, 2), daemon=True)
    held.start()
    while get(server.port, "/health")[1]["pending"] < 1:
        time.sleep(0.02)
    time.sleep(0.3)
    start = time.monotonic()
    server.process.send_signal(signal.SIGTERM)
    code = server.process.wait(timeout=60)
    return {"full_queue_status": status, "full_queue_answer_s": round(busy_s, 3),
            "sigterm_exit_s": round(time.monotonic() - start, 2), "sigterm_exit_code": code}  # fmt: skip


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--context", type=int, default=8192)
    parser.add_argument("--requests", type=int, default=32)
    parser.add_argument("--memory-requests", type=int, default=200)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        repo = build_tiny_repo(root, args.context)
        media = root / "media"
        media.mkdir()
        picture().save(media / "picture.png")
        picture((80, 120), (30, 160, 60)).save(media / "other.png")
        http = MediaServer(media)
        server = ServerProcess(
            repo, root / "server.log", "--allowed-local-media-path", str(media), "--media-timeout", "2",
            "--max-queue", str(args.requests * 2),
        )  # fmt: skip
        try:
            kinds = mixed(media, http)
            answers = expected_answers(repo, kinds)
            result = {
                "load": load_figures(server.port, kinds, answers, args.requests),
                "memory": memory_figures(server, kinds, args.memory_requests),
                "trickle": trickle_figures(server.port, http, 2),
                "runaway": runaway_figures(server, args.context),
            }
        finally:
            server.stop()
            http.close()
        result["queue"] = queue_figures(repo, root)
    for section, figures in result.items():
        print(f"{section:8s} " + "  ".join(f"{key}={value}" for key, value in figures.items()))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
