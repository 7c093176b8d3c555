"""Pretraining, fine-tuning and evaluation with the Hugging Face `Trainer` (Accelerate underneath).

The scripts in ``scripts/`` are thin wrappers: they parse a YAML file (plus command-line overrides) into
`ModelArguments`, `DataArguments` and `transformers.TrainingArguments` and call `run_training` / `run_evaluation`.
The same scripts run unchanged under ``accelerate launch`` or ``torchrun`` (DDP, FSDP, several nodes): the Trainer
steps the optimizer and the learning-rate schedule on every rank, so replicas stay identical (the paper's code
stepped the schedule on rank 0 only).
"""

from __future__ import annotations

import json
import math
import sys
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path

import numpy as np
import torch
from transformers import HfArgumentParser, Trainer, TrainingArguments, set_seed

from ..configuration_spectrafm import SpectraFMConfig
from ..grids import apogee_wavelength_7514
from ..hub import resolve_model
from ..modeling_spectrafm import SpectraFMModel, gaussian_nll
from ..processing_spectrafm import SpectraFMProcessor
from ..safe_write import atomic_directory, check_target
from .collator import EpochCallback, SpectraCollator
from .guards import CollapseGuardCallback
from .freezing import freeze
from .info import TrainingInfoCallback, training_info, write_training_info
from .metrics import label_metrics, make_compute_metrics
from .presets import read_yaml
from .weight_average import WEIGHT_AVERAGE_FILE, WeightAverage, WeightAverageCallback

__all__ = ["ModelArguments", "DataArguments", "SpectraFMTrainer", "parse_args", "args_from_dict", "run_training",
           "train_or_reuse", "run_evaluation", "select_stars", "add_labels", "grow_token_table", "fit_scalar_inputs",
           "helper_labels_for"]


@dataclass
class ModelArguments:
    model_name_or_path: str | None = field(default=None, metadata={"help": "Start from this checkpoint (fine-tune); "
                                                                           "none = a fresh model (pretraining)."})
    config_overrides: dict = field(default_factory=dict, metadata={"help": "SpectraFMConfig fields for a fresh model "
                                                                           "(e.g. hidden_size) or to change on load."})
    target_labels: list[str] | None = field(default=None, metadata={"help": "Labels to train and evaluate "
                                                                        "(default: the model's)."})
    helper_labels: list[str] | None = field(default=None, metadata={
        "help": "Labels trained together with target_labels (default: those the loaded model already predicts "
                "that the training split has values of). Fine-tuning on [Fe/H] alone can collapse to a constant; "
                "with the labels the model knows as helpers it learns (issue 14)."})
    use_helper_labels: bool = field(default=True, metadata={"help": "False: train on target_labels only"})
    collapse_min_spread: float = field(default=0.02, metadata={
        "help": "Stop training (and say so) when, at three evaluations in a row after warm-up, the validation "
                "predictions of a label spread less than this fraction of its true spread (a constant prediction); "
                "0 = no guard."})
    l2sp_alpha: float = field(default=0.0, metadata={
        "help": "L2-SP: weight of the penalty sum |w - w_start|^2 toward the starting checkpoint's weights during "
                "fine-tuning (0 = off; e.g. 0.01 for 100-star fine-tunes), issue 14."})
    ema_decay: float = field(default=0.0, metadata={
        "help": "Keep an exponential moving average of the trainable weights with this decay (e.g. 0.999; 0 = off): "
                "evaluations, checkpoint choice, early stopping and the final model use the average "
                "(spectrafm_hf.training.weight_average)."})
    label_loss_weights: dict = field(default_factory=dict, metadata={
        "help": "Training-loss weight per label, e.g. {FE_H: 2.0}; labels not named weigh 1. The evaluation loss "
                "(checkpoint choice, early stopping) stays unweighted."})
    nll_beta: float = field(default=0.0, metadata={
        "help": "beta-NLL (Seitzer et al. 2022): each label's training NLL term weighted by its predicted variance "
                "to the power beta, held fixed in the gradient, so the stars a model is unsure of still pull its "
                "mean (0 = the plain Gaussian NLL; 0.5 = that paper's choice; 1 = the mean learns as under a "
                "squared error). The evaluation loss stays the plain NLL."})
    student_t_dof: float = field(default=0.0, metadata={
        "help": "Train on a Student-t likelihood with this many degrees of freedom (> 2; 0 = the Gaussian NLL): its "
                "heavy tails let a star far from its prediction (a wrong catalogue label, a bad spectrum) pull the "
                "mean less. The predicted variance is then the distribution's scale squared, and "
                "calibrate_uncertainties rescales the sigmas to cover 68 %% of validation stars. The evaluation loss "
                "(checkpoint choice, early stopping) is the same Student-t NLL."})
    calibrate_uncertainties: bool = field(default=True, metadata={
        "help": "After training, fit the per-label sigma recalibration (SpectraFMPipeline.calibrate_uncertainties) "
                "on the validation split (at least 20 stars) and save it with the processor, so predict's 68 %% "
                "intervals cover 68 %% of validation stars (issue 14; %% doubled: argparse formats help text)."})
    freeze: list[str] = field(default_factory=list, metadata={"help": "decoder, encoder, encoder_block_2, embeddings"})
    lora_r: int = field(default=0, metadata={"help": "LoRA rank (0 = full fine-tuning); merged into the weights at "
                                                     "the end so the result is a plain SpectraFM folder."})
    lora_alpha: int = 16
    lora_dropout: float = 0.0
    lora_target_modules: list[str] = field(
        default_factory=lambda: ["q_proj", "k_proj", "v_proj", "out_proj", "dense_1", "dense_2"],
        metadata={"help": "module names LoRA adapts: attention q_proj/k_proj/v_proj/out_proj, FFN dense_1/dense_2"})
    flux_normalization: str = field(default="global", metadata={"help": "fresh model: global | per_pixel"})
    divide_by_median: bool = field(default=False, metadata={"help": "fresh model: divide each spectrum by its median "
                                                                    "first (flux-calibrated spectra such as Gaia XP)"})
    flux_softening: float | None = field(default=None, metadata={"help": "fresh model: compress normalised flux as "
                                                                       "s*asinh(x/s) before the clip (None = off)"})
    clip_sigma: float = field(default=10.0, metadata={"help": "fresh model: normalised flux beyond +-clip_sigma is "
                                                               "missing (benchmarks/xp_flux_clipping.py)"})
    pixel_subset_rule: str = field(default="random", metadata={"help": "fresh model: random | interleaved (every "
                                                                      "k-th pixel at a random phase)"})


@dataclass
class DataArguments:
    dataset_config: str = field(default="synthetic_apogee", metadata={"help": "a SpectraFMDatasets config name"})
    dataset_kwargs: dict = field(default_factory=dict, metadata={"help": "builder arguments (n_train, seed, ...)"})
    dataset_cache_dir: str | None = None
    dataset_name: str | None = field(default=None, metadata={"help": "a Hub dataset id (org/name, published with "
                                                                      "spectrafm push-dataset) instead of a builder"})
    dataset_subset: str | None = field(default=None, metadata={"help": "its configuration (e.g. apogee)"})
    dataset_revision: str | None = None
    data_files: dict = field(default_factory=dict, metadata={"help": "or Parquet files per split, e.g. {train: "
                                                                     "shards/train-*.parquet, validation: ...}"})
    pixel_range: list[int] | None = field(default=None, metadata={"help": "APOGEE 7514-grid pixel window [start, "
                                                                          "end) to read (the paper's stages)"})
    wavelength_window: list[float] | None = field(default=None, metadata={"help": "or a window in vacuum Angstrom"})
    train_selection: dict = field(default_factory=dict, metadata={"help": "e.g. {FE_H: [-1.0, null]} keeps stars "
                                                                          "with FE_H > -1 in the training split"})
    max_train_stars: int | None = field(default=None, metadata={"help": "random subset of this many training stars"})
    selection_seed: int = 77
    eval_split: str = "validation"
    test_split: str | None = "test"
    max_eval_stars: int | None = None
    input_label_names: list[str] = field(default_factory=list)
    input_label_prob: float = 0.0
    input_label_noise: dict = field(default_factory=dict, metadata={
        "help": "{name: sigma} in label units: Gaussian noise added to that given input in training rows, so the "
                "model learns how far to trust an input measured that well, e.g. {TEFF: 250}"})
    window_prob: float = field(default=0.0, metadata={"help": "probability that a training row reads one contiguous "
                                                              "window of random position and width (0 = scattered "
                                                              "pixels only; spectrafm_hf.training.pixel_subsets)"})
    window_width: list[int] | None = field(default=None, metadata={"help": "[min, max] window width in pixels"})
    rehearsal: dict = field(default_factory=dict, metadata={
        "help": "rehearsal while fine-tuning: rows of an earlier stage's training set, with their labels, mixed into "
                "the training split so that about `fraction` of every batch is rehearsal, e.g. {dataset_config: "
                "observed_apogee, dataset_kwargs: {n_train: 10000, seed: 1, continuum: pseudo}, fraction: 0.5} "
                "(keys: dataset_config + dataset_kwargs, or data_dir: a save_to_disk folder; fraction, seed, rows: how "
                "many rehearsal spectra); empty = "
                "none (issue 14)"})
    masked_flux_fraction: float = field(default=0.0, metadata={
        "help": "masked-flux pretraining (0 = off): this fraction of every training row's pixels, one contiguous "
                "run in wavelength, is held out of the input and its flux predicted too (its Gaussian NLL added "
                "to the loss; the evaluation loss stays the labels'); spectra need no labels to teach it"})
    augment: dict = field(default_factory=dict, metadata={"help": "realism augmentation of training rows, the fields "
                                                                  "of spectrafm_hf.synth.augment.RealismAugment (e.g. "
                                                                  "{snr_range: [50, 500]}); empty = none"})


def student_t_nll(mean, log_variance, target, target_err=None, weights=None, dof: float = 5.0):
    """`gaussian_nll` with a Student-t likelihood of ``dof`` degrees of freedom, constants dropped: scale^2 =
    exp(log_variance) + target_err**2, and each term 0.5 (dof + 1) log(1 + r^2 / (dof scale^2)) + 0.5 log scale^2,
    so a residual r of many scales pulls the mean like log r, not r^2. NaN targets are ignored."""
    valid = torch.isfinite(target)
    scale2 = log_variance.exp()
    if target_err is not None:
        scale2 = scale2 + torch.nan_to_num(target_err.to(scale2.dtype), nan=0.0, posinf=0.0) ** 2
    residual = torch.where(valid, target - mean, torch.zeros_like(mean))
    nll = 0.5 * (dof + 1.0) * torch.log1p(residual**2 / (dof * scale2)) + 0.5 * torch.log(scale2)
    if weights is not None:
        nll = nll * weights
    return torch.where(valid, nll, torch.zeros_like(nll)).sum() / valid.sum().clamp_min(1)


class SpectraFMTrainer(Trainer):
    """A `Trainer` whose evaluation uses a deterministic collator (the same pixel subset for the same star at every
    evaluation), so validation losses are comparable and checkpoint selection is not a coin toss."""

    def __init__(self, *args, eval_data_collator=None, l2sp_alpha: float = 0.0, label_loss_weights=None,
                 nll_beta: float = 0.0, student_t_dof: float = 0.0, ema_decay: float = 0.0, **kwargs):
        super().__init__(*args, **kwargs)
        # evaluations, checkpoint choice and the final model use the weights' running average (weight_average.py)
        self.weight_average = WeightAverage(self.model, ema_decay) if ema_decay else None
        if self.weight_average is not None:
            self.add_callback(WeightAverageCallback(self.weight_average))
        self.eval_data_collator = eval_data_collator
        # one weight per query column (the collator's label order); None = the model's own unweighted loss
        self.label_loss_weights = None if label_loss_weights is None else torch.as_tensor(label_loss_weights,
                                                                                            dtype=torch.float32)
        if not (math.isfinite(nll_beta) and 0.0 <= nll_beta <= 1.0):
            raise ValueError(f"nll_beta must lie in [0, 1] (0 = the plain Gaussian NLL), got {nll_beta}")
        self.nll_beta = float(nll_beta)
        if student_t_dof and not (math.isfinite(student_t_dof) and student_t_dof > 2.0):
            raise ValueError(f"student_t_dof must be above 2 (a finite variance), or 0 for the Gaussian NLL; "
                             f"got {student_t_dof}")
        self.student_t_dof = float(student_t_dof)
        # L2-SP (Li et al. 2018): a penalty alpha * sum |w - w_start|^2 over the trainable weights that existed in
        # the starting checkpoint, so fine-tuning on a few stars stays near what pretraining learned
        self.l2sp_alpha = float(l2sp_alpha)
        self.l2sp_start = {n: p.detach().clone() for n, p in self.model.named_parameters() if p.requires_grad} \
            if self.l2sp_alpha > 0 else {}

    def compute_loss(self, model, inputs, return_outputs=False, **kwargs):
        # weights shape the training loss only; a Student-t likelihood is the model's, so it scores evaluations too
        reweighted = model.training and (self.label_loss_weights is not None or self.nll_beta)
        if reweighted or self.student_t_dof:
            outputs = model(**inputs)
            nll = partial(student_t_nll, dof=self.student_t_dof) if self.student_t_dof else gaussian_nll
            loss = nll(outputs.mean, outputs.log_variance, inputs["labels"].to(outputs.mean.dtype),
                       inputs.get("label_err"),
                       weights=self.training_loss_weights(outputs, inputs) if model.training else None)
            if outputs.masked_flux_loss is not None:
                loss = loss + outputs.masked_flux_loss
            out = (loss, outputs) if return_outputs else loss
        else:
            out = super().compute_loss(model, inputs, return_outputs=return_outputs, **kwargs)
        if not self.l2sp_start or not model.training:
            return out
        loss, rest = (out[0], out[1]) if return_outputs else (out, None)
        penalty = sum(((p - self.l2sp_start[n]) ** 2).sum() for n, p in getattr(model, "module", model)
                      .named_parameters() if n in self.l2sp_start)
        loss = loss + self.l2sp_alpha * penalty
        return (loss, rest) if return_outputs else loss

    def training_loss_weights(self, outputs, inputs):
        """Each NLL term's weight in the training loss: its label's ``label_loss_weights`` times, for beta-NLL, the
        term's variance (as gaussian_nll forms it) to the power ``nll_beta``, without gradient."""
        weights = 1.0 if self.label_loss_weights is None else self.label_loss_weights.to(outputs.mean.device)
        if self.nll_beta:
            var = outputs.log_variance.detach().exp()
            if inputs.get("label_err") is not None:
                var = var + torch.nan_to_num(inputs["label_err"].to(var.dtype), nan=0.0, posinf=0.0) ** 2
            weights = weights * var ** self.nll_beta
        return weights

    def evaluate(self, *args, **kwargs):
        if self.weight_average is None:
            return super().evaluate(*args, **kwargs)
        with self.weight_average.applied():
            return super().evaluate(*args, **kwargs)

    def _save_checkpoint(self, model, trial):
        super()._save_checkpoint(model, trial)
        if self.weight_average is not None and self.args.should_save:
            folder = Path(self._get_output_dir(trial=trial)) / f"checkpoint-{self.state.global_step}"
            if folder.is_dir():  # not rotated away
                self.weight_average.save(folder)

    def _load_from_checkpoint(self, resume_from_checkpoint, model=None):
        super()._load_from_checkpoint(resume_from_checkpoint, model=model)
        if self.weight_average is not None and not self.weight_average.load(resume_from_checkpoint):
            raise ValueError(f"{resume_from_checkpoint} holds no {WEIGHT_AVERAGE_FILE}: it was saved without "
                             "ema_decay; resume it without, or start the run again")

    def _load_best_model(self):
        super()._load_best_model()  # the raw weights of the best checkpoint; its average replaces them at train end
        if self.weight_average is not None:
            self.weight_average.load(self.state.best_model_checkpoint)

    def _swap(self, fn, *args, **kwargs):
        train_collator = self.data_collator
        if self.eval_data_collator is not None:
            self.data_collator = self.eval_data_collator
        try:
            return fn(*args, **kwargs)
        finally:
            self.data_collator = train_collator

    def get_eval_dataloader(self, eval_dataset=None):
        return self._swap(super().get_eval_dataloader, eval_dataset)

    def get_test_dataloader(self, test_dataset):
        return self._swap(super().get_test_dataloader, test_dataset)

    def push_to_hub(self, commit_message: str | None = "End of training", blocking: bool = True,
                    token: str | None = None, revision: str | None = None, private: bool | None = None, **kwargs):
        """`Trainer.push_to_hub`, allow-listed: the trainer's current model (LoRA adapters merged into a copy) and
        processor are saved into a temporary folder and pushed from there with `spectrafm_hf.publish.push_pipeline`.
        The Trainer's own push uploads every file of ``output_dir`` (a user's notes, secrets, ``training_args.bin``);
        ``trainer.save_model()`` with ``push_to_hub=True`` also lands here. ``kwargs`` (the Trainer's model-card
        fields) are ignored: the card is the package's. Returns the `CommitInfo` (None off the main process)."""
        import copy
        import tempfile

        from ..publish import push_pipeline

        if not self.is_world_process_zero():
            return None
        token = token or self.args.hub_token
        if self.hub_model_id is None:
            self.init_hf_repo(token=token)
        model = self.accelerator.unwrap_model(self.model)
        if hasattr(model, "merge_and_unload"):  # LoRA: push merged weights, keep the trainer's adapters
            model = copy.deepcopy(model).merge_and_unload()
        with tempfile.TemporaryDirectory(prefix="spectrafm-push-") as tmp:
            model.save_pretrained(tmp)
            self.processing_class.save_pretrained(tmp)
            return push_pipeline(tmp, self.hub_model_id, commit_message=commit_message or "End of training",
                                 private=self.args.hub_private_repo if private is None else private, token=token,
                                 revision=revision or self.args.hub_revision)

    def _push_from_checkpoint(self, checkpoint_folder: str) -> None:
        """``--push_to_hub`` during training: upload the checkpoint's allow-listed files only
        (`spectrafm_hf.publish.push_trainer_checkpoint`), never the whole output_dir (the Trainer's own push takes
        every file there, user files and ``training_args.bin`` included, and copies weights into output_dir)."""
        from transformers.trainer_utils import HubStrategy, SaveStrategy

        from ..publish import push_trainer_checkpoint

        if not self.is_world_process_zero() or self.args.hub_strategy == HubStrategy.END:
            return
        self.callback_handler.on_push_begin(self.args, self.state, self.control)
        step = (f"step {self.state.global_step}" if self.args.save_strategy == SaveStrategy.STEPS
                else f"epoch {int(self.state.epoch or 0)}")
        sub = {HubStrategy.CHECKPOINT: "last-checkpoint",
               HubStrategy.ALL_CHECKPOINTS: Path(checkpoint_folder).name}.get(self.args.hub_strategy)
        push_trainer_checkpoint(checkpoint_folder, self.hub_model_id, path_in_repo=sub,
                                commit_message=f"Training in progress, {step}", token=self.args.hub_token,
                                revision=self.args.hub_revision)


# ---------------------------------------------------------------------------------------------------- arguments
def parse_args(argv=None):
    """``script.py [config.yaml] [--field value ...]``: YAML values become defaults, flags override them."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = HfArgumentParser((ModelArguments, DataArguments, TrainingArguments))
    if argv and argv[0].endswith((".yaml", ".yml")):
        values = read_yaml(Path(argv.pop(0)).read_text()) or {}
        known = {f.name for dc in parser.dataclass_types for f in dc.__dataclass_fields__.values()}
        unknown = sorted(set(values) - known)
        if unknown:
            raise SystemExit(f"unknown keys in the YAML file: {unknown}")
        parser.set_defaults(**values)
    return parser.parse_args_into_dataclasses(args=argv)


def args_from_dict(values: dict):
    """(ModelArguments, DataArguments, TrainingArguments) from one flat dict of their fields (a YAML preset)."""
    parser = HfArgumentParser((ModelArguments, DataArguments, TrainingArguments))
    return parser.parse_dict(values)


# ---------------------------------------------------------------------------------------------------- data
def _window(data_args: DataArguments):
    if data_args.wavelength_window:
        return list(data_args.wavelength_window)
    if data_args.pixel_range:
        grid = apogee_wavelength_7514()
        a, b = data_args.pixel_range
        lo = (grid[a - 1] + grid[a]) / 2 if a > 0 else grid[0] - 1
        hi = (grid[b - 1] + grid[b]) / 2 if b < len(grid) else grid[-1] + 1
        return [float(lo), float(hi)]
    return None


def select_stars(dataset, selection: dict, max_stars: int | None, seed: int):
    """Rows whose label columns fall inside ``selection`` ({name: [lo, hi]}, None = open; strict inequalities),
    then a seeded random subset of ``max_stars`` of them."""
    # ..data imports `datasets`, which the GPU scripts run without (they import this module): imported where used
    from ..data.schema import column_values, require_columns

    if selection:
        require_columns(dataset.column_names, list(selection), what="train_selection: the training data")
    keep = np.ones(len(dataset), bool)
    for name, (lo, hi) in (selection or {}).items():
        col = column_values(dataset, name)
        ok = np.isfinite(col)
        if lo is not None:
            ok &= col > lo
        if hi is not None:
            ok &= col < hi
        keep &= ok
    idx = np.flatnonzero(keep)
    if max_stars is not None and idx.size > max_stars:
        idx = np.sort(np.random.default_rng(seed).choice(idx, max_stars, replace=False))
    return dataset.select(idx) if idx.size != len(dataset) else dataset


def extrapolation_split(fit_values, validation_values, quantile: float = 0.3, min_stars: int = 5):
    """The extrapolation check of a few-shot recipe (issue 14): ``(cut, fit_kept, validation_scored)``, ``cut`` the
    ``quantile`` of ``fit_values`` and the two boolean masks: the fitting rows at or above it and the validation rows
    below it. A recipe fitted again on the kept rows and scored on those validation rows is judged on stars outside
    the range it was fitted on — as metal-poor test stars lie outside the range of metal-rich fitting stars — so a
    rule can see how it extrapolates from labels of one range alone (metal-rich validation alone rewards the read-out
    most pulled towards the fitting stars' mean; benchmarks/extrapolation_selection.py)."""
    fit = np.asarray(fit_values, np.float64)
    val = np.asarray(validation_values, np.float64)
    if not 0.0 < float(quantile) < 1.0:
        raise ValueError(f"quantile must be strictly between 0 and 1, got {quantile}")
    if not (np.isfinite(fit).all() and np.isfinite(val).all()):
        raise ValueError("extrapolation_split needs finite values; drop the unlabelled rows first")
    cut = float(np.quantile(fit, quantile))
    kept, scored = fit >= cut, val < cut
    if kept.sum() < min_stars or scored.sum() < min_stars:
        raise ValueError(f"extrapolation_split: {kept.sum()} fitting rows at or above the cut {cut:.3g} and "
                         f"{scored.sum()} validation rows below it; at least {min_stars} of each are needed")
    return cut, kept, scored


def add_rehearsal(train, rehearsal: dict, cache_dir=None):
    """``train`` with rows of another set of the package's schema appended (see ``DataArguments.rehearsal``):
    ``rows`` of them (default ``fraction / (1 - fraction)`` times as many as ``train``; at most all of that set),
    drawn with ``seed``, and ``train`` repeated so that about ``fraction`` of the rows are rehearsal (many rehearsal
    spectra next to 100 stars); its columns are cast to ``train``'s, label columns ``train`` lacks are dropped and
    ones it has but the set lacks are NaN (the loss ignores NaN labels)."""
    import datasets

    from ..data import load_spectra_dataset

    unknown = set(rehearsal) - {"dataset_config", "dataset_kwargs", "data_dir", "fraction", "seed", "rows"}
    sources = [k for k in ("dataset_config", "data_dir") if rehearsal.get(k)]
    if unknown or len(sources) != 1:
        raise ValueError(f"rehearsal needs one of dataset_config (a builder config, with dataset_kwargs) or data_dir "
                         f"(a folder written by datasets' save_to_disk), and optionally fraction, seed, rows; got "
                         f"{sorted(rehearsal)}")
    fraction = float(rehearsal.get("fraction", 0.5))
    if not 0 < fraction < 1:
        raise ValueError(f"rehearsal fraction must be in (0, 1), got {fraction}")
    source = rehearsal[sources[0]]
    if sources[0] == "data_dir":
        if not Path(source).is_dir():
            raise ValueError(f"rehearsal data_dir {source} is not a folder (save a Dataset there with save_to_disk)")
        pool = datasets.load_from_disk(str(source))
        if isinstance(pool, datasets.DatasetDict):
            pool = pool["train"]
    else:
        pool = load_spectra_dataset(source, cache_dir=cache_dir, **(rehearsal.get("dataset_kwargs") or {}))["train"]
    n = min(len(pool), int(rehearsal.get("rows") or max(1, round(len(train) * fraction / (1 - fraction)))))
    pool = pool.select(np.sort(np.random.default_rng(int(rehearsal.get("seed", 0))).choice(len(pool), n, False)))
    for name in train.column_names:
        if name not in pool.column_names:
            if getattr(train.features[name], "dtype", None) not in ("float32", "float64"):
                raise ValueError(f"rehearsal: {source} has no {name!r} column")
            pool = pool.add_column(name, np.full(len(pool), np.nan, np.float32))
    pool = pool.select_columns(train.column_names).cast(train.features)
    repeat = max(1, round(n * (1 - fraction) / (fraction * len(train))))
    print(f"rehearsal: {n} rows of {source} mixed with {len(train)} training rows"
          + (f" repeated {repeat}x" if repeat > 1 else ""), file=sys.stderr)
    return datasets.concatenate_datasets([train] * repeat + [pool])


def loss_weights_for(weights: dict, label_names) -> list[float] | None:
    """``label_loss_weights`` as one weight per trained label (1 where not named); None when every weight is 1."""
    unknown = sorted(set(weights or {}) - set(label_names))
    if unknown:
        raise ValueError(f"label_loss_weights names {unknown}, which are not trained (labels: {list(label_names)})")
    values = [float((weights or {}).get(n, 1.0)) for n in label_names]
    if any(not (math.isfinite(v) and v >= 0) for v in values) or not any(values):
        raise ValueError(f"label_loss_weights must be finite, >= 0 and not all 0, got {weights}")
    return None if all(v == 1.0 for v in values) else values


def check_label_columns(dataset, label_names, input_label_names=(), split="train"):
    """The labels a run trains on must be columns of its data with at least one known value (a label table without
    the column gives an all-NaN column: nothing to learn); other columns are ignored."""
    from ..data.schema import column_values, require_columns

    spectrum_columns = {"object_id", "instrument", "wavelength", "flux", "ivar", "mask", "lsf_sigma"}
    found = [c for c in dataset.column_names if c not in spectrum_columns]
    wanted = list(label_names) + [n for n in input_label_names if n not in label_names]
    hint = ("add them to the label table (and to dataset_kwargs.label_names when they are not "
            "TEFF/LOGG/O_FE/MG_FE/FE_H) or set target_labels")
    require_columns(found, wanted, what=f"the {split} split has no label column for some labels", hint=hint)
    empty = [n for n in label_names if not np.isfinite(column_values(dataset, n)).any()]
    if empty:
        raise ValueError(f"the {split} split has no known value (all NaN) of {empty}: is the label table missing "
                         f"those columns, or its object_id not matching the spectra? Label columns found: "
                         f"{[c for c in found if not c.endswith('_err')]}")


def load_data(data_args: DataArguments):
    """(train, eval, test) from a builder config (``dataset_config`` + ``dataset_kwargs``), or from a Hub dataset
    (``dataset_name``/``dataset_subset``/``dataset_revision``) or Parquet ``data_files`` in the package's schema."""
    from ..data import load_published_dataset, load_spectra_dataset

    if data_args.dataset_name or data_args.data_files:
        dsd = load_published_dataset(data_args.dataset_name, data_args.dataset_subset,
                                     data_files=data_args.data_files or None, revision=data_args.dataset_revision,
                                     cache_dir=data_args.dataset_cache_dir)
    else:
        dsd = load_spectra_dataset(data_args.dataset_config, cache_dir=data_args.dataset_cache_dir,
                                   **data_args.dataset_kwargs)
    if "train" not in dsd:
        raise ValueError(f"the dataset has no 'train' split (splits: {sorted(dsd)})")
    train = select_stars(dsd["train"], data_args.train_selection, data_args.max_train_stars, data_args.selection_seed)
    evald = dsd[data_args.eval_split] if data_args.eval_split in dsd else None
    if evald is not None and data_args.max_eval_stars and len(evald) > data_args.max_eval_stars:
        evald = evald.select(range(data_args.max_eval_stars))
    test = dsd[data_args.test_split] if data_args.test_split and data_args.test_split in dsd else None
    return train, evald, test


def helper_labels_for(model_args: ModelArguments, target_labels, train_dataset) -> list[str]:
    """The labels trained next to ``target_labels`` (see ``ModelArguments.helper_labels``): explicit ones must be
    columns of the training split; by default, the labels the loaded checkpoint predicts that the training split
    has at least one value of (a fresh model predicts nothing yet: no default helpers)."""
    from ..data.schema import column_values

    if not model_args.use_helper_labels:
        return []
    targets = list(target_labels)
    if model_args.helper_labels is not None:
        helpers = [n for n in model_args.helper_labels if n not in targets]
        check_label_columns(train_dataset, helpers, split="train (helper_labels)")
        return helpers
    if not model_args.model_name_or_path:
        return []
    known = SpectraFMConfig.from_pretrained(resolve_model(model_args.model_name_or_path)).label_names
    return [n for n in known if n not in targets and n in train_dataset.column_names
            and np.isfinite(column_values(train_dataset, n)).any()]


# ---------------------------------------------------------------------------------------------------- model
def grow_token_table(model: SpectraFMModel, label_names=(), scalar_input_names=()) -> SpectraFMModel:
    """The model with token-type rows for the labels and scalar inputs it does not have yet: their rows initialised
    as a fresh model's, every other weight as it was (so a trained model can learn a new label or input)."""
    new_labels = [n for n in label_names if n not in model.config.label_names]
    new_inputs = [n for n in scalar_input_names if n not in model.config.scalar_input_names]
    if not new_labels and not new_inputs:
        return model
    cfg = model.config.to_dict()
    for key in ("architectures", "auto_map", "transformers_version", "model_type"):
        cfg.pop(key, None)
    cfg["label_names"] = model.config.label_names + new_labels
    cfg["scalar_input_names"] = model.config.scalar_input_names + new_inputs
    bigger = SpectraFMModel(SpectraFMConfig(**cfg))
    new_state = bigger.state_dict()
    n_old = 1 + len(model.config.label_names)  # the flux token and the old labels keep their rows
    for key, value in model.state_dict().items():
        if key.startswith("embedding_layer."):
            new_state[key][:n_old] = value[:n_old]
            start = n_old + len(new_labels)  # the old scalar inputs move down below the new labels
            new_state[key][start : start + len(model.config.scalar_input_names)] = value[n_old:]
        else:
            new_state[key] = value
    bigger.load_state_dict(new_state)
    return bigger


def add_labels(model: SpectraFMModel, processor: SpectraFMProcessor, names, train_dataset=None):
    """Give the model new labels to predict (a new label set for a fine-tune): new embedding rows, new scalers."""
    from ..data.schema import column_values

    new = [n for n in names if n not in model.config.label_names]
    if not new:
        return model, processor
    if train_dataset is None or any(n not in train_dataset.column_names for n in new):
        raise ValueError(f"new labels {new} need a training set with those columns to fit their scaling")
    bigger = grow_token_table(model, label_names=new)
    values = np.column_stack([column_values(train_dataset, n) for n in new])
    fitted = SpectraFMProcessor(label_names=new).fit_labels(values, new)
    processor.label_names += new
    processor.label_centers += fitted.label_centers
    processor.label_scales += fitted.label_scales
    processor.label_ranges.update(fitted.label_ranges)
    return bigger, processor


def fit_scalar_inputs(processor: SpectraFMProcessor, names, train_dataset):
    """Median / robust-sigma scalers of non-spectra inputs (e.g. magnitudes) that have none yet."""
    from ..data.schema import column_values

    for name in names:
        if name in processor.scalar_centers:
            continue
        if name not in train_dataset.column_names:
            raise ValueError(f"scalar input {name!r} is not a column of the training set ({train_dataset.column_names})")
        v = column_values(train_dataset, name)
        v = v[np.isfinite(v)]
        if not v.size:
            raise ValueError(f"scalar input {name!r} has no finite value in the training set")
        center = float(np.median(v))
        scale = float(1.4826 * np.median(np.abs(v - center))) or float(np.std(v)) or 1.0
        processor.scalar_centers[name], processor.scalar_scales[name] = center, scale
    return processor


def build_model(model_args: ModelArguments, train_dataset, label_names):
    from ..data.schema import column_values

    if model_args.model_name_or_path:
        path = resolve_model(model_args.model_name_or_path)
        overrides = dict(model_args.config_overrides)
        inputs = overrides.pop("scalar_input_names", None) or []  # new inputs get new rows, not a size mismatch
        model = SpectraFMModel.from_pretrained(path, **overrides)
        processor = SpectraFMProcessor.from_pretrained(path)
        # statistics of the starting weights' outputs go stale once they change: the out-of-distribution test of the
        # embedding (refit with benchmarks/reliability_stats.py), the sigma recalibration (refit after training) and
        # a label correction
        processor.embedding_mean = processor.embedding_whitening = processor.embedding_threshold = None
        processor.uncertainty_scale = {}
        processor.label_affine = {}  # a correction of the starting network's predictions (calibrate_labels)
        processor.linear_probes = {}  # read from the starting network's features (fit_linear_probe)
        model, processor = add_labels(model, processor, label_names, train_dataset)
        model = grow_token_table(model, scalar_input_names=inputs)
        fit_scalar_inputs(processor, model.config.scalar_input_names, train_dataset)
        return model, processor
    cfg = SpectraFMConfig(**{"label_names": label_names, **model_args.config_overrides})
    processor = SpectraFMProcessor(label_names=cfg.label_names, context_length=cfg.context_length,
                                   divide_by_median=model_args.divide_by_median, clip_sigma=model_args.clip_sigma,
                                   flux_softening=model_args.flux_softening,
                                   pixel_subset_rule=model_args.pixel_subset_rule)
    processor.flux_normalization = model_args.flux_normalization  # per_pixel: its arrays are set by fit_flux below
    fit_scalar_inputs(processor, cfg.scalar_input_names, train_dataset)
    sample = train_dataset.select(range(min(len(train_dataset), 2000))).with_format("numpy")
    # usable flux (NaN where ivar == 0) in its stored precision; fit_flux works in float64 (a third of the peak
    # memory of converting every row first: 2,000 APOGEE rows are 120 MB, not 360)
    flux = [np.where(np.asarray(r["ivar"]) > 0, r["flux"], np.nan) if len(r["ivar"]) else np.asarray(r["flux"])
            for r in sample]
    if model_args.flux_normalization == "per_pixel":
        processor.fit_flux(np.stack(flux).astype(np.float64), np.asarray(sample[0]["wavelength"], np.float64))
    else:
        if model_args.divide_by_median:  # spectra of different lengths: divide one by one
            flux = [f / np.nanmedian(f) for f in flux]
        processor.fit_flux(np.concatenate(flux))
    labels = np.column_stack([column_values(train_dataset, n) for n in cfg.label_names])
    processor.fit_labels(labels, cfg.label_names)
    wl = np.asarray(sample[0]["wavelength"], np.float64)
    processor.wavelength_coverage = [[float(wl.min()), float(wl.max())]]
    return SpectraFMModel(cfg), processor


def _apply_lora(model, model_args):
    from peft import LoraConfig, get_peft_model

    lora = LoraConfig(r=model_args.lora_r, lora_alpha=model_args.lora_alpha, lora_dropout=model_args.lora_dropout,
                      target_modules=model_args.lora_target_modules)
    return get_peft_model(model, lora)


# ---------------------------------------------------------------------------------------------------- runs
def save_pipeline_folder(model, processor, folder, info: dict, metrics: dict | None = None,
                         overwrite: bool = False):
    """config.json + model.safetensors + code + preprocessor_config.json + training_info.json, written atomically
    and without touching other files (`spectrafm_hf.safe_write.atomic_directory`: a folder holding files that are
    not ours is refused unless ``overwrite``)."""
    with atomic_directory(folder, overwrite=overwrite) as tmp:
        model.save_pretrained(tmp)
        processor.save_pretrained(tmp)
        write_training_info(tmp, {**info, "metrics": metrics or {}})
    return folder


def run_training(model_args: ModelArguments, data_args: DataArguments, training_args: TrainingArguments,
                 callbacks=(), splits=None):
    """Train (pretrain or fine-tune), evaluate, save the final pipeline folder; returns (trainer, metrics).

    ``splits`` = (train, eval, test) datasets in the package schema replaces ``data_args.dataset_config``."""
    set_seed(training_args.seed)
    if training_args.should_save:  # refuse a final/ holding the user's files now, not after the training
        check_target(Path(training_args.output_dir) / "final")
    training_args.label_names = ["labels"]  # not label_err: HF_NOTES pitfall 2
    training_args.remove_unused_columns = False  # the collator reads columns forward() does not take
    training_args.ddp_find_unused_parameters = False
    if splits is None:
        train, evald, test = load_data(data_args)
    else:
        train, evald, test = splits
        train = select_stars(train, data_args.train_selection, data_args.max_train_stars, data_args.selection_seed)
    if data_args.rehearsal:
        train = add_rehearsal(train, data_args.rehearsal, data_args.dataset_cache_dir)
    # rows reach the collator as numpy arrays, not lists of Python floats
    train, evald, test = (None if d is None else d.with_format("numpy") for d in (train, evald, test))
    label_names = model_args.target_labels
    if label_names is None and model_args.model_name_or_path:
        label_names = SpectraFMConfig.from_pretrained(resolve_model(model_args.model_name_or_path)).label_names
    if label_names is None:
        from ..data import DEFAULT_LABEL_NAMES

        label_names = list(DEFAULT_LABEL_NAMES)
    check_label_columns(train, label_names, data_args.input_label_names)
    helpers = helper_labels_for(model_args, label_names, train)
    label_names = list(label_names) + helpers  # trained and evaluated like the targets
    model, processor = build_model(model_args, train, label_names)
    query_ids = [model.config.label_names.index(n) for n in label_names]
    input_ids = [(model.config.label_names + model.config.scalar_input_names).index(n)
                 for n in data_args.input_label_names]
    trainable = freeze(model, model_args.freeze)
    base_model = model
    if model_args.lora_r:
        model = _apply_lora(model, model_args)
        trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    window = _window(data_args)
    common = dict(processor=processor, label_names=label_names, query_ids=query_ids, wavelength_window=window,
                  input_label_names=data_args.input_label_names, input_label_prob=data_args.input_label_prob,
                  input_ids=input_ids, input_label_noise=data_args.input_label_noise, seed=training_args.seed)
    info = training_info(
        config={"model": asdict(model_args), "data": asdict(data_args),
                "training": {k: v for k, v in training_args.to_dict().items() if not k.startswith("_")}},
        data={"train": len(train), "eval": len(evald) if evald is not None else 0,
              "test": len(test) if test is not None else 0, "wavelength_window": window, "labels": label_names,
              "helper_labels": helpers},
        seed=training_args.seed,
        trainable_parameters=int(trainable),
        total_parameters=int(base_model.num_parameters()),
    )
    from ..synth.augment import RealismAugment

    train_collator = SpectraCollator(**common, window_prob=data_args.window_prob, window_width=data_args.window_width,
                                     augment=RealismAugment.from_dict(data_args.augment),
                                     masked_flux_fraction=data_args.masked_flux_fraction)
    guards = []
    if model_args.collapse_min_spread > 0 and evald is not None:
        guards.append(CollapseGuardCallback(label_names, model_args.collapse_min_spread, patience=3))
    trainer = SpectraFMTrainer(
        model=model,
        args=training_args,
        train_dataset=train,
        eval_dataset=evald,
        data_collator=train_collator,
        eval_data_collator=SpectraCollator(**common, deterministic=True),
        l2sp_alpha=model_args.l2sp_alpha if model_args.model_name_or_path else 0.0,
        label_loss_weights=loss_weights_for(model_args.label_loss_weights, label_names),
        nll_beta=model_args.nll_beta,
        student_t_dof=model_args.student_t_dof,
        ema_decay=model_args.ema_decay,
        compute_metrics=make_compute_metrics(processor, label_names),
        processing_class=processor,
        callbacks=[TrainingInfoCallback(info), EpochCallback(train_collator), *guards, *callbacks],
    )
    trainer.train(resume_from_checkpoint=training_args.resume_from_checkpoint)
    metrics = {}
    for guard in guards:
        if guard.collapsed:
            metrics["collapsed"] = guard.collapsed  # in final_metrics.json and training_info.json
    if evald is not None:
        metrics.update(trainer.evaluate(evald, metric_key_prefix="eval"))
    if test is not None:
        metrics.update(trainer.evaluate(test, metric_key_prefix="test"))
    if model_args.lora_r:
        model = trainer.model.merge_and_unload()
    else:
        model = trainer.model
    model = getattr(model, "module", model)
    if model_args.calibrate_uncertainties and evald is not None and len(evald) >= 20 and trainer.is_world_process_zero():
        try:
            metrics["uncertainty_scale"] = calibrate_on_split(model, processor, evald, label_names,
                                                              _window(data_args), training_args.seed)
            print(f"uncertainty_scale fitted on {len(evald)} validation stars: {metrics['uncertainty_scale']}",
                  file=sys.stderr)
        except ValueError as e:  # e.g. too few labelled validation stars: the trained model is kept, uncalibrated
            print(f"WARNING: no uncertainty recalibration ({e})", file=sys.stderr)
    if trainer.is_world_process_zero():
        final = Path(training_args.output_dir) / "final"
        save_pipeline_folder(model, processor, final, info, metrics)
        (Path(training_args.output_dir) / "final_metrics.json").write_text(json.dumps(metrics, indent=2))
        if training_args.push_to_hub:
            _push_final(trainer, final, model_args, metrics)
    return trainer, metrics


def _push_final(trainer, final: Path, model_args: ModelArguments, metrics: dict):
    """Push ``final/`` where the checkpoints went: ``hub_model_id``, or the Trainer's own default repo
    (``<user>/<output_dir name>``, created by the Trainer), on ``hub_revision``, with ``hub_token`` and
    ``hub_private_repo`` (None: the Hub's default visibility); the card's ``base_model`` names the start checkpoint's
    Hub id (``spectrafm/spectrafm-base`` for the package's default)."""
    from ..default_model import base_model_id
    from ..publish import push_pipeline

    args = trainer.args
    if trainer.hub_model_id is None:  # set by the Trainer (init_hf_repo) when it was made with push_to_hub
        trainer.init_hf_repo(token=args.hub_token)
    push_pipeline(final, trainer.hub_model_id, private=args.hub_private_repo, token=args.hub_token,
                  revision=args.hub_revision,
                  commit_message="SpectraFM: final model, card, processor, training_info.json",
                  card_info={"base_model": base_model_id(model_args.model_name_or_path), "metrics": metrics})


def train_or_reuse(values: dict, splits=None, log=print) -> Path:
    """Train one run from a flat dict of argument fields into ``values["output_dir"]``; a run whose ``final/``
    folder exists is reused as it is, an interrupted one resumes from its last checkpoint. Returns ``final/``.

    ``values["early_stopping_patience"]`` (optional, not a Trainer field): stop when ``metric_for_best_model`` on
    the evaluation split has not improved for that many evaluations (a plateau; ``max_steps`` is then a budget)."""
    from transformers import EarlyStoppingCallback
    from transformers.trainer_utils import get_last_checkpoint

    values = dict(values)
    patience = values.pop("early_stopping_patience", None)
    callbacks = [EarlyStoppingCallback(early_stopping_patience=int(patience))] if patience else []
    run_dir = Path(values["output_dir"])
    final = run_dir / "final"
    if (final / "config.json").is_file():
        log(f"{final} exists, skipped")
        return final
    with _run_lock(run_dir, log):  # two scripts side by side wanting one run (a shared pretraining) train it once
        if (final / "config.json").is_file():
            log(f"{final} exists, skipped (trained by another process)")
            return final
        model_args, data_args, training_args = args_from_dict(values)
        last = get_last_checkpoint(str(run_dir))
        if last:
            training_args.resume_from_checkpoint = last
            log(f"resuming from {last}")
        log(f"training ({training_args.max_steps} steps) into {run_dir}")
        run_training(model_args, data_args, training_args, callbacks=callbacks, splits=splits)
    return final


@contextmanager
def _run_lock(run_dir: Path, log=print):
    """Hold an exclusive lock on ``run_dir/.lock`` (created with the folder), waiting while another process holds
    it. The operating system drops the lock when its process ends, so a killed run never leaves a stale lock.
    Without ``fcntl`` (Windows) no lock is taken."""
    run_dir.mkdir(parents=True, exist_ok=True)
    try:
        import fcntl
    except ImportError:
        yield
        return
    with open(run_dir / ".lock", "a") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log(f"another process is training into {run_dir}; waiting for it")
            fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def calibrate_on_split(model, processor, split, label_names, window=None, seed: int = 0) -> dict[str, float]:
    """Fit ``processor.uncertainty_scale`` on a dataset split (the validation stars) through the pipeline's own
    prediction path (all pixels, subsets combined), in place; returns the factors."""
    from ..data import column_values, dataset_spectra
    from ..pipeline import SpectraFMPipeline

    was_training = model.training
    pipe = SpectraFMPipeline(model.eval(), processor, device=next(model.parameters()).device)
    spectra = dataset_spectra(split)
    if window:
        spectra = [s.crop(*window) for s in spectra]
    table = {n: column_values(split, n) for n in label_names}
    errs = {n: column_values(split, f"{n}_err") for n in label_names if f"{n}_err" in split.column_names}
    label_err = np.column_stack([errs[n] for n in label_names]) if len(errs) == len(label_names) else None
    try:
        return pipe.calibrate_uncertainties(spectra, table, label_names, label_err=label_err, seed=seed)
    finally:
        model.train(was_training)


def run_evaluation(model_path, data_args: DataArguments, label_names=None, seed: int = 0, n_repeats: int = 1,
                   output_csv=None):
    """Predict a dataset split with the pipeline (all pixels, inverse-variance combination of subsets) and return
    per-label metrics in physical units; optionally write the per-star predictions to ``output_csv``."""
    from ..data import dataset_spectra
    from ..pipeline import SpectraFMPipeline

    pipe = SpectraFMPipeline.from_pretrained(model_path)
    _, evald, test = load_data(data_args)
    split = test if test is not None else evald
    names = label_names or pipe.label_names
    from ..data.schema import column_values, require_columns

    require_columns(split.column_names, names, what="the evaluation split")
    window = _window(data_args)
    spectra = [s.crop(*window) if window else s for s in dataset_spectra(split)]
    table = pipe.predict(spectra, labels=names, seed=seed, n_repeats=n_repeats)
    metrics = {}
    for name in names:
        true = column_values(split, name)
        table[f"{name}_true"] = true
        for key, v in label_metrics(table[name], true, table[f"{name}_err"]).items():
            metrics[f"{name}_{key}"] = v
    if output_csv:
        table.to_csv(output_csv, index=False)
    return metrics, table
