"""Run by tests/test_ddp.py under `torchrun --nproc_per_node 2`: a tiny pretraining through the package's own
training entry point; each rank records its learning rate at every step and a hash of its final weights."""

import hashlib
import json
import os
import sys

import torch
from transformers import TrainerCallback, TrainingArguments

sys.path.insert(0, os.path.dirname(__file__))
from conftest import fake_dataset_dict  # noqa: E402

from spectrafm_hf.training.run import DataArguments, ModelArguments, run_training  # noqa: E402

TINY_MODEL = dict(hidden_size=8, encoder_num_heads=[2, 2], encoder_ffn_dims=[16, 8], decoder_num_heads=[2, 2, 1],
                  decoder_ffn_dims=[16, 8, 8], head_dims=[16, 8], context_length=64)


class RankRecorder(TrainerCallback):
    def __init__(self):
        self.lrs = []

    def on_step_end(self, args, state, control, optimizer=None, **kwargs):
        self.lrs.append(optimizer.param_groups[0]["lr"])


if __name__ == "__main__":
    out = sys.argv[1]
    recorder = RankRecorder()
    dsd = fake_dataset_dict(n_train=32, n_eval=8)
    args = TrainingArguments(output_dir=out, max_steps=6, per_device_train_batch_size=4, learning_rate=1e-3,
                             lr_scheduler_type="cosine", warmup_steps=2, save_strategy="no", eval_strategy="no",
                             report_to=[], use_cpu=True, seed=0, disable_tqdm=True, logging_steps=3)
    trainer, _ = run_training(ModelArguments(config_overrides=TINY_MODEL), DataArguments(), args,
                              callbacks=[recorder], splits=(dsd["train"], None, None))
    model = getattr(trainer.model, "module", trainer.model)
    digest = hashlib.sha256(b"".join(p.detach().numpy().tobytes() for p in model.parameters())).hexdigest()
    rank = int(os.environ.get("RANK", 0))
    with open(os.path.join(out, f"rank{rank}.json"), "w") as f:
        json.dump({"rank": rank, "world_size": int(os.environ.get("WORLD_SIZE", 1)), "lrs": recorder.lrs,
                   "weights_sha256": digest, "global_step": trainer.state.global_step}, f)
    # a clean shutdown: a rank that exits while the other still holds the gloo group can abort at teardown
    # ("terminate called without an active exception")
    import torch.distributed as dist

    if dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()
    # and skip the interpreter's C++ teardown, where a gloo thread left joinable can still abort a finished rank
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)
