"""A training run killed mid-way and resumed from its last checkpoint ends exactly where an uninterrupted run
ends: same data order, same pixel subsets, same learning-rate schedule, same weights."""

import json
import subprocess
import sys

import torch
from conftest import TESTS
from safetensors.torch import load_file


def _run(out, kill_at=0, resume=False):
    return subprocess.run([sys.executable, str(TESTS / "resume_worker.py"), str(out), str(kill_at),
                           "resume" if resume else "fresh"], capture_output=True, text=True, timeout=600,
                          env={"HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"})


def test_kill_and_resume_matches_an_uninterrupted_run(tmp_path):
    straight = _run(tmp_path / "straight")
    assert straight.returncode == 0, straight.stderr[-3000:]
    killed = _run(tmp_path / "killed", kill_at=3)
    assert killed.returncode == 137  # died after step 3; checkpoint-2 is the last complete one
    assert (tmp_path / "killed" / "checkpoint-2").is_dir() and not (tmp_path / "killed" / "final").exists()
    resumed = _run(tmp_path / "killed", resume=True)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    a = load_file(tmp_path / "straight" / "final" / "model.safetensors")
    b = load_file(tmp_path / "killed" / "final" / "model.safetensors")
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=1e-6, msg=key)
    state_a = json.loads((tmp_path / "straight" / "checkpoint-6" / "trainer_state.json").read_text())
    state_b = json.loads((tmp_path / "killed" / "checkpoint-6" / "trainer_state.json").read_text())
    assert state_a["global_step"] == state_b["global_step"] == 6
