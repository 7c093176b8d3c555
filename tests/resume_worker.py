"""Run by tests/test_resume.py in a subprocess: a tiny pretraining that can be killed hard after a given step
(os._exit, like SIGKILL: no cleanup) and resumed from its last checkpoint."""

import os
import sys

from transformers import TrainerCallback, TrainingArguments

sys.path.insert(0, os.path.dirname(__file__))
from conftest import fake_dataset_dict  # noqa: E402

from spectrafm_hf.training.run import DataArguments, ModelArguments, run_training  # noqa: E402

TINY_MODEL = dict(hidden_size=8, encoder_num_heads=[2, 2], encoder_ffn_dims=[16, 8], decoder_num_heads=[2, 2, 1],
                  decoder_ffn_dims=[16, 8, 8], head_dims=[16, 8], context_length=64)


class KillAt(TrainerCallback):
    def __init__(self, step):
        self.step = step

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == self.step:
            os._exit(137)


if __name__ == "__main__":
    out, kill_at, resume = sys.argv[1], int(sys.argv[2]), sys.argv[3] == "resume"
    dsd = fake_dataset_dict(n_train=40, n_eval=8)
    args = TrainingArguments(output_dir=out, max_steps=6, per_device_train_batch_size=4, learning_rate=3e-3,
                             lr_scheduler_type="cosine", warmup_steps=1, save_strategy="steps", save_steps=2,
                             eval_strategy="no", report_to=[], use_cpu=True, seed=0, disable_tqdm=True,
                             resume_from_checkpoint=True if resume else None)
    callbacks = [KillAt(kill_at)] if kill_at else []
    run_training(ModelArguments(config_overrides=TINY_MODEL), DataArguments(), args, callbacks=callbacks,
                 splits=(dsd["train"], None, None))
