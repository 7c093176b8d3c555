"""Datasets on the Hub: publish spectra as Parquet with a dataset card, and read them back (Hub id or Parquet
``data_files``) for training and evaluation.

    >>> from spectrafm_hf.data import load_spectra_dataset, push_dataset, load_published_dataset  # doctest: +SKIP
    >>> dsd = load_spectra_dataset("observed_apogee", n_train=5000)
    >>> push_dataset(dsd, "my-org/apogee-observed", subset="apogee")    # Parquet shards + README.md card
    >>> load_published_dataset("my-org/apogee-observed", subset="apogee")   # the same rows, anywhere
    >>> load_published_dataset(data_files={"train": "shards/train-*.parquet"})  # or local Parquet files
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import datasets

from .schema import DEFAULT_LABEL_NAMES, require_columns

__all__ = ["load_published_dataset", "push_dataset"]

SPECTRUM_COLUMNS = ("object_id", "instrument", "wavelength", "flux", "ivar", "flux_err", "mask")


def _label_columns(dataset: datasets.Dataset) -> list[str]:
    return [c for c in dataset.column_names if c not in SPECTRUM_COLUMNS and not c.upper().endswith("_ERR")]


def push_dataset(
    dataset: datasets.DatasetDict | datasets.Dataset,
    repo_id: str,
    subset: str = "default",
    *,
    private: bool | None = None,
    token: str | None = None,
    revision: str | None = None,
    card_info: Mapping | None = None,
    commit_message: str | None = None,
):
    """Publish spectra in the package's schema to the Hub dataset repo ``repo_id``, as configuration ``subset``.

    The repo is created if needed with ``private`` (None = the Hub's default for the account; never forced
    public). The dataset card (``render_dataset_card``: schema, labels, survey citations, row counts) goes up first
    and ``datasets`` then adds the Parquet shards and the ``configs`` metadata, so ``datasets.load_dataset(repo_id,
    subset)`` and :func:`load_published_dataset` read it back. ``card_info`` are extra `render_dataset_card`
    fields (``pretty_name``, ``description``, ``license``, ``source``, ...). Returns the list of files in the repo.
    """
    from huggingface_hub import HfApi

    from ..hub import render_dataset_card

    if isinstance(dataset, datasets.Dataset):
        dataset = datasets.DatasetDict({"train": dataset})
    if not isinstance(dataset, datasets.DatasetDict) or not len(dataset):
        raise TypeError(f"push_dataset: dataset must be a non-empty DatasetDict or Dataset, got {type(dataset).__name__}")
    for split, ds in dataset.items():
        require_columns(ds.column_names, ["object_id", "wavelength", "flux"], what=f"push_dataset: split {split!r}",
                        hint="build it with spectrafm_hf.data (load_spectra_dataset / spectra_to_table)")
    first = next(iter(dataset.values()))
    instruments = sorted({str(i) for ds in dataset.values() for i in ds.unique("instrument")}) \
        if "instrument" in first.column_names else None
    api = HfApi(token=token)
    api.create_repo(repo_id, repo_type="dataset", private=private, exist_ok=True)
    info = dict(repo_id=repo_id, instruments=instruments, label_names=_label_columns(first) or DEFAULT_LABEL_NAMES,
                num_rows={subset: {k: len(v) for k, v in dataset.items()}}, **dict(card_info or {}))
    if "readme.md" not in {f.lower() for f in api.list_repo_files(repo_id, repo_type="dataset", revision=revision)}:
        render_dataset_card(**info).push_to_hub(repo_id, repo_type="dataset", token=token, revision=revision)
    dataset.push_to_hub(repo_id, config_name=subset, private=private, token=token, revision=revision,
                        commit_message=commit_message or f"Upload spectra ({subset})")
    return api.list_repo_files(repo_id, repo_type="dataset", revision=revision)


def load_published_dataset(
    name: str | None = None,
    subset: str | None = None,
    *,
    data_files: str | Sequence[str] | Mapping[str, str | Sequence[str]] | None = None,
    revision: str | None = None,
    cache_dir: str | None = None,
    streaming: bool = False,
    token: str | None = None,
) -> datasets.DatasetDict | datasets.IterableDatasetDict:
    """Spectra in the package's schema from a Hub dataset id (``name``, ``subset``, ``revision``) or from Parquet
    ``data_files`` (a path/glob, a list, or ``{split: files}``; plain files go to ``train``). ``streaming`` reads
    rows as they are needed (nothing is cached; for splits too large for the disk or memory). Raises ValueError
    when neither is given or the rows lack ``wavelength``/``flux``."""
    if not name and not data_files:
        raise ValueError("load_published_dataset: give a Hub dataset id (name=...) or Parquet data_files=...")
    if name:
        dsd = datasets.load_dataset(name, subset, data_files=data_files, revision=revision, cache_dir=cache_dir,
                                    streaming=streaming, token=token)
    else:
        dsd = datasets.load_dataset("parquet", data_files=data_files, cache_dir=cache_dir, streaming=streaming)
    for split, ds in dsd.items():
        columns = ds.column_names if ds.column_names is not None else list(ds.features or {})
        require_columns(columns, ["wavelength", "flux"], what=f"{name or data_files}: split {split!r}",
                        hint="publish spectra with spectrafm_hf.data.push_dataset (the package's row schema)")
    return dsd
