"""lmms-eval's command line on a tiny offline task, and what it wrote (the lmms-eval tests' shared steps).

lmms-eval exits 0 and prints its results table even when every request failed (a plugin error, a dependency that
does not import), so the tests read the files it writes: the samples JSONL (`--log_samples`) and the results JSON.
"""

import json
import os
import subprocess
import sys


def run_lmms_eval(root, task: str, model_args: str, batch_size, out) -> subprocess.CompletedProcess:
    """`python -m lmms_eval --model deepstack` offline on `task` (its yaml in `root / "tasks"`), writing to `out`."""
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", HF_HOME=str(root / "hf_home"))
    command = [
        sys.executable, "-m", "lmms_eval",
        "--model", "deepstack",
        "--model_args", model_args,
        "--tasks", task,
        "--include_path", str(root / "tasks"),
        "--batch_size", str(batch_size),
        "--log_samples",
        "--output_path", str(out),
    ]
    return subprocess.run(command, env=env, cwd=root, capture_output=True, text=True, timeout=500)


def written(out, pattern: str, completed: subprocess.CompletedProcess):
    """The one file lmms-eval wrote under `out` matching `pattern`; its output's tail when there is none."""
    files = list(out.rglob(pattern))
    assert len(files) == 1, (pattern, files, completed.stdout[-2000:], completed.stderr[-3000:])
    return files[0]


def samples_and_results(out, task: str, completed: subprocess.CompletedProcess) -> tuple[list[dict], dict]:
    """The logged samples of `task`, ordered by document, and the results JSON."""
    lines = written(out, f"*_samples_{task}.jsonl", completed).read_text().splitlines()
    samples = sorted((json.loads(line) for line in lines), key=lambda sample: sample["doc_id"])
    return samples, json.loads(written(out, "*_results.json", completed).read_text())
