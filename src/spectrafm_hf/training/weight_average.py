"""`WeightAverage`: an exponential moving average of the trainable weights (Polyak averaging), for the Trainer.

With ``ModelArguments.ema_decay`` > 0, `SpectraFMTrainer` keeps an average of the weights over the optimizer steps;
evaluations, checkpoint choice, early stopping and the saved final model all use the average, while the optimizer
keeps stepping the raw weights. Small-batch training at a high learning rate leaves the raw weights jittering around
a minimum; their average sits nearer its centre. Each checkpoint holds the raw weights (``model.safetensors``, so a
run resumes exactly) and the average (``weight_average.safetensors``); the kept best checkpoint's average becomes the
final model.

The decay warms up, ``min(ema_decay, (1 + t) / (10 + t))`` at step t, so short fine-tunes (a few hundred steps) are
not dominated by the starting weights.
"""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from transformers import TrainerCallback

__all__ = ["WeightAverage", "WeightAverageCallback", "WEIGHT_AVERAGE_FILE"]

WEIGHT_AVERAGE_FILE = "weight_average.safetensors"


class WeightAverage:
    """The running average of ``model``'s trainable parameters (by name), with ``decay`` in (0, 1)."""

    def __init__(self, model: torch.nn.Module, decay: float):
        if not 0.0 < float(decay) < 1.0:
            raise ValueError(f"ema_decay must be in (0, 1) (0 = off), got {decay}")
        self.decay = float(decay)
        self.model = model
        self.params = {n: p for n, p in model.named_parameters() if p.requires_grad}
        self.average = {n: p.detach().clone() for n, p in self.params.items()}
        self.updates = 0

    @torch.no_grad()
    def update(self):
        """Fold the current weights in (after an optimizer step)."""
        decay = min(self.decay, (1.0 + self.updates) / (10.0 + self.updates))
        # one fused call over every tensor: the same numbers as a lerp_ per tensor, less per-step overhead
        torch._foreach_lerp_(list(self.average.values()), [p.detach() for p in self.params.values()], 1.0 - decay)
        self.updates += 1

    @contextmanager
    def applied(self):
        """The model holds the averaged weights inside the block and its raw weights again after it."""
        raw = {n: p.detach().clone() for n, p in self.params.items()}
        self.copy_to_model()
        try:
            yield
        finally:
            with torch.no_grad():
                for n, p in self.params.items():
                    p.copy_(raw[n])

    @torch.no_grad()
    def copy_to_model(self):
        for n, p in self.params.items():
            p.copy_(self.average[n])

    def save(self, folder):
        state = {n: t.contiguous() for n, t in self.average.items()}
        save_file(state, str(Path(folder) / WEIGHT_AVERAGE_FILE), metadata={"updates": str(self.updates)})

    def load(self, folder) -> bool:
        """Restore the average saved in ``folder``; False when it holds none."""
        path = Path(folder) / WEIGHT_AVERAGE_FILE
        if not path.is_file():
            return False
        with safe_open(str(path), framework="pt") as f:
            missing = set(self.average) - set(f.keys())
            if missing:
                raise ValueError(f"{path} lacks the average of {sorted(missing)[:3]}: saved by another model")
            for n, t in self.average.items():
                t.copy_(f.get_tensor(n).to(t.device, t.dtype))
            self.updates = int((f.metadata() or {}).get("updates", 0))
        return True


class WeightAverageCallback(TrainerCallback):
    """Updates the average after every optimizer step and puts it into the model when training ends."""

    def __init__(self, average: WeightAverage):
        self.average = average

    def on_step_end(self, args, state, control, **kwargs):
        self.average.update()

    def on_train_end(self, args, state, control, **kwargs):
        self.average.copy_to_model()
