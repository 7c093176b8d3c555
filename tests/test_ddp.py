"""Real two-process DDP on CPU (gloo) through the package's training entry point: both ranks follow the same
learning-rate schedule and end with identical weights (the paper's code stepped the schedule on one rank only).
`accelerate launch --cpu` starts a single process, so torchrun is used (HF_NOTES section 5)."""

import json
import os
import shutil
import socket
import subprocess
import sys

import pytest
from conftest import TESTS


@pytest.mark.skipif(shutil.which("torchrun") is None and not os.path.exists(
    os.path.join(os.path.dirname(sys.executable), "torchrun")), reason="torchrun not installed")
def test_two_process_ddp_keeps_replicas_identical(tmp_path):
    torchrun = os.path.join(os.path.dirname(sys.executable), "torchrun")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    with socket.socket() as sock:  # a free port, so parallel runs do not collide
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    res = subprocess.run([torchrun, "--nproc_per_node", "2", "--master_addr", "127.0.0.1", "--master_port", str(port),
                          str(TESTS / "ddp_worker.py"), str(tmp_path)], capture_output=True, text=True, env=env,
                         timeout=600)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-4000:]
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert [r["world_size"] for r in ranks] == [2, 2]
    assert ranks[0]["global_step"] == ranks[1]["global_step"] == 6
    assert ranks[0]["lrs"] == ranks[1]["lrs"] and len(set(ranks[0]["lrs"])) > 2  # a real, shared schedule
    assert ranks[0]["weights_sha256"] == ranks[1]["weights_sha256"]
    assert (tmp_path / "final" / "model.safetensors").is_file()  # written once, by rank 0


@pytest.mark.parametrize("name", ["ddp_1node.yaml", "ddp_2nodes.yaml", "fsdp.yaml"])
def test_shipped_accelerate_configs_parse(name):
    from accelerate.commands.config.config_args import load_config_from_file

    from conftest import REPO

    cfg = load_config_from_file(str(REPO / "scripts" / "configs" / "accelerate" / name))
    assert cfg.num_processes >= 4 and cfg.mixed_precision == "bf16"
