"""Training beyond one process: a 2-process CPU run (torchrun, gloo) of tiny DeepStack-V and DeepStack-L fine-tunes
gives the loss trajectory of the single-process run with the same global batch.

Strategies (tests/distributed_finetune.py): the `Trainer` (DDP; Accelerate runs the Trainer's FSDP option as DDP on
CPU) and PyTorch FSDP2 (`fully_shard` per CLIP layer and decoder layer) in a plain loop. Any gradient that is not
synchronised, or a shard that is updated wrongly, changes the losses of steps 2 and 3.
"""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

import distributed_finetune as job

SCRIPT = Path(job.__file__)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def two_processes(tmp_path_factory):
    out = tmp_path_factory.mktemp("torchrun") / "losses.json"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(job.__file__).parents[1] / "src"), os.environ.get("PYTHONPATH", "")])}
    command = [
        sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
        "--master_port", str(free_port()), str(SCRIPT), str(out),
    ]
    run = subprocess.run(command, env=env, capture_output=True, text=True, timeout=540)
    assert run.returncode == 0, run.stderr[-4000:]
    return json.loads(out.read_text())


@pytest.mark.parametrize("variant", sorted(job.VARIANTS))
@pytest.mark.parametrize("strategy, wrapper", [("trainer", "DistributedDataParallel"), ("fsdp2", "FSDPDeepStackForConditionalGeneration")])
def test_two_processes_follow_the_single_process_losses(two_processes, tmp_path, variant, strategy, wrapper):
    distributed = two_processes[strategy][variant]
    assert distributed["wrapper"] == wrapper
    single = job.STRATEGIES[strategy](variant, str(tmp_path), world_size=1)
    assert len(distributed["losses"]) == len(single["losses"]) == job.STEPS
    assert distributed["losses"] == pytest.approx(single["losses"], rel=1e-5)
    assert single["losses"][-1] != pytest.approx(single["losses"][0], rel=1e-3)  # the parameters did move
