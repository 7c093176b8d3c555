"""`CollapseGuardCallback`: stop a run whose predictions have collapsed to a constant, and say so.

A regression head can settle on predicting the mean label for every star (the Gaussian NLL is then at a local
minimum with a large predicted variance); fine-tuning on [Fe/H] alone does this on real Gaia XP spectra (issue 14).
Training on does not recover; the guard ends the run and records which labels collapsed.
"""

from __future__ import annotations

import logging

from transformers import TrainerCallback

__all__ = ["CollapseGuardCallback"]

logger = logging.getLogger(__name__)


class CollapseGuardCallback(TrainerCallback):
    """Stop training when, at ``patience`` evaluations in a row after warm-up, a label's validation predictions
    spread less than ``min_spread`` times its true spread (the ``eval_<LABEL>_spread`` metric of
    `make_compute_metrics`). Healthy runs pass through low spreads early on (on real Gaia XP from scratch at lr 2e-3,
    [Fe/H] at 0.01 of its true spread 200 steps in, while Teff is learnt first; benchmarks/xp_recipe_sweep.py), so
    one low evaluation is not a verdict; a collapsed run stays near 0.

    ``collapsed`` maps each collapsed label to {"step", "spread"} (empty while nothing collapsed); the run keeps
    its checkpoints and `run_training` writes ``collapsed`` into its final metrics.
    """

    def __init__(self, label_names, min_spread: float = 0.02, patience: int = 3):
        if not 0 < float(min_spread) < 1:
            raise ValueError(f"min_spread must be in (0, 1), got {min_spread}")
        if int(patience) < 1:
            raise ValueError(f"patience must be at least 1, got {patience}")
        self.label_names = list(label_names)
        self.min_spread = float(min_spread)
        self.patience = int(patience)
        self.low = {n: 0 for n in self.label_names}  # evaluations in a row below min_spread
        self.collapsed: dict = {}

    def on_evaluate(self, args, state, control, metrics=None, **kwargs):
        if not metrics or state.global_step <= args.get_warmup_steps(state.max_steps):
            return control
        found = {}
        for name in self.label_names:
            spread = metrics.get(f"eval_{name}_spread")
            if spread is None or spread != spread:  # NaN: no targets, no verdict
                continue
            self.low[name] = self.low[name] + 1 if spread < self.min_spread else 0
            if self.low[name] >= self.patience:
                found[name] = {"step": int(state.global_step), "spread": float(spread)}
        if found:
            self.collapsed.update(found)
            control.should_training_stop = True
            msg = ", ".join(f"{n} (spread {v['spread']:.3g} of the true spread)" for n, v in found.items())
            logger.warning(f"predictions collapsed to a constant at step {state.global_step}: {msg}; training "
                           f"stopped (lower the learning rate, or train with helper labels)")
            print(f"[spectrafm] training stopped at step {state.global_step}: predictions collapsed for {msg}",
                  flush=True)
        return control
