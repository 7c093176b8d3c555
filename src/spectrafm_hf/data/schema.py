"""The one dataset schema of the package (every builder config writes it; the collator reads it).

Per row (one spectrum):

- ``object_id`` (string), ``instrument`` (string)
- ``wavelength`` (list of float32, vacuum Angstrom), ``flux`` (list of float32), ``ivar`` (list of float32; empty when
  unknown), ``mask`` (list of bool, True = good; empty = all good), ``lsf_sigma`` (list of float32 Angstrom, one value
  for the whole spectrum or one per pixel; empty when unknown)
- one float32 column per label and one ``<LABEL>_err`` column (NaN = unknown), by default TEFF, LOGG, O_FE, MG_FE,
  FE_H; a source may add more labels (they are appended to the same scheme).

Tables are built column-wise from numpy blocks with pyarrow (tens of thousands of spectra per second), not row by row.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pyarrow as pa
from datasets import Features, List, Value

from ..spectrum import Spectrum

__all__ = ["DEFAULT_LABEL_NAMES", "features", "arrays_to_table", "spectra_to_table", "row_to_spectrum",
           "arrow_rows", "dataset_spectra", "require_columns", "column_values"]

DEFAULT_LABEL_NAMES = ["TEFF", "LOGG", "O_FE", "MG_FE", "FE_H"]


def require_columns(columns, required, what: str = "label table", hint: str = "") -> None:
    """Raise a ValueError naming the ``required`` columns missing from ``columns`` and the columns that were found
    (with the ones that differ only in case or underscores pointed out). Extra columns are never an error."""
    columns = [str(c) for c in columns]
    missing = [str(n) for n in required if str(n) not in columns]
    if not missing:
        return
    def key(name):
        return name.lower().replace("_", "").replace(" ", "")

    loose = {key(c): c for c in columns}
    near = [f"{loose[key(m)]!r} for {m!r}" for m in missing if key(m) in loose]
    raise ValueError(f"{what}: missing column{'s' if len(missing) > 1 else ''} {missing}; the columns found are "
                     f"{columns}" + (f" (similar names: {', '.join(near)})" if near else "")
                     + (f"; {hint}" if hint else ""))


def column_values(dataset, name: str, dtype=np.float64) -> np.ndarray:
    """One column of a `datasets.Dataset` (its row selection and format honoured) as a numpy array. ``dataset[name]``
    is a lazy column in `datasets` >= 4, which ``np.asarray`` reads row by row (1.4 s for 28,643 Gaia XP rows, against
    6 ms for its slice). A missing column is a ValueError naming the columns found."""
    require_columns(dataset.column_names, [name], what="the dataset")
    return np.asarray(dataset[name][:], dtype=dtype)


def features(label_names: Sequence[str] = DEFAULT_LABEL_NAMES) -> Features:
    cols = {
        "object_id": Value("string"),
        "instrument": Value("string"),
        "wavelength": List(Value("float32")),
        "flux": List(Value("float32")),
        "ivar": List(Value("float32")),
        "mask": List(Value("bool")),
        "lsf_sigma": List(Value("float32")),
    }
    for name in label_names:
        cols[name] = Value("float32")
        cols[f"{name}_err"] = Value("float32")
    return Features(cols)


SPECTRUM_COLUMNS = frozenset(features([]))  # the columns that are not labels (built once: a Features per row cost 1 ms)


def _list_column(blocks: list[np.ndarray], dtype) -> pa.Array:
    """A list<dtype> column from per-row 1-D arrays (possibly of different lengths), without Python loops over
    pixels."""
    lengths = np.fromiter((len(b) for b in blocks), dtype=np.int64, count=len(blocks))
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int32)
    flat = np.concatenate(blocks).astype(dtype) if len(blocks) and lengths.sum() else np.zeros(0, dtype)
    return pa.ListArray.from_arrays(pa.array(offsets), pa.array(flat))


def _rows(block, n, dtype):
    """Per-row arrays from a (n, p) block, a (p,) array shared by every row, or None (empty lists)."""
    if block is None:
        return [np.zeros(0, dtype)] * n
    if isinstance(block, list):
        return [np.asarray(b, dtype) for b in block]
    block = np.asarray(block, dtype)
    if block.ndim == 1:
        return [block] * n
    return list(block)


def arrays_to_table(
    object_id,
    instrument,
    wavelength,
    flux,
    labels=None,
    label_err=None,
    label_names: Sequence[str] = DEFAULT_LABEL_NAMES,
    ivar=None,
    mask=None,
    lsf_sigma=None,
) -> pa.Table:
    """Build a table in the schema from arrays. ``flux`` is (n, p) or a list of 1-D arrays; ``wavelength``, ``ivar``,
    ``mask`` likewise or shared (p,); ``labels``/``label_err`` are (n, len(label_names)) with NaN = unknown."""
    n = len(flux)
    label_names = list(label_names)
    labels = np.full((n, len(label_names)), np.nan) if labels is None else np.asarray(labels, np.float64)
    label_err = np.full_like(labels, np.nan) if label_err is None else np.asarray(label_err, np.float64)
    if labels.shape != (n, len(label_names)) or label_err.shape != labels.shape:
        raise ValueError(f"labels must be ({n}, {len(label_names)}) for {label_names}, got {labels.shape}")
    ids = [str(o) for o in (object_id if not isinstance(object_id, str) else [object_id] * n)]
    inst = [instrument] * n if isinstance(instrument, str) else [str(i) for i in instrument]
    lsf = lsf_sigma
    if lsf is not None and np.ndim(lsf) == 0:
        lsf = np.full(1, float(lsf), np.float32)
    flux_rows = _rows(flux, n, np.float32)
    wl_rows = _rows(wavelength, n, np.float32)
    if any(len(w) != len(f) for w, f in zip(wl_rows, flux_rows)):
        raise ValueError("every row needs as many wavelengths as flux values")
    cols = {
        "object_id": pa.array(ids, pa.string()),
        "instrument": pa.array(inst, pa.string()),
        "wavelength": _list_column(wl_rows, np.float32),
        "flux": _list_column(flux_rows, np.float32),
        "ivar": _list_column(_rows(ivar, n, np.float32), np.float32),
        "mask": _list_column(_rows(mask, n, bool), bool),
        "lsf_sigma": _list_column(_rows(lsf, n, np.float32), np.float32),
    }
    for k, name in enumerate(label_names):
        cols[name] = pa.array(labels[:, k].astype(np.float32))
        cols[f"{name}_err"] = pa.array(label_err[:, k].astype(np.float32))
    return pa.table(cols, schema=features(label_names).arrow_schema)


def spectra_to_table(spectra: Sequence[Spectrum], labels=None, label_err=None,
                     label_names: Sequence[str] = DEFAULT_LABEL_NAMES) -> pa.Table:
    """Build a table from `Spectrum` objects (any grids)."""
    n = len(spectra)
    return arrays_to_table(
        object_id=[s.meta.get("object_id") or s.meta.get("source") or f"spectrum{i}" for i, s in enumerate(spectra)],
        instrument=[s.instrument or "unknown" for s in spectra],
        wavelength=[s.wavelength for s in spectra],
        flux=[s.flux for s in spectra],
        ivar=[s.ivar if s.ivar is not None else np.zeros(0) for s in spectra],
        mask=[s.mask for s in spectra],
        lsf_sigma=[np.atleast_1d(s.lsf_sigma) if s.lsf_sigma is not None else np.zeros(0) for s in spectra],
        labels=labels if labels is not None else np.full((n, len(label_names)), np.nan),
        label_err=label_err,
        label_names=label_names,
    )


def arrow_rows(table: pa.Table) -> list[dict]:
    """The rows of an Arrow table as dicts: list columns as numpy arrays (slices of one buffer per column; a null
    list is None), the other columns as Python values. Read column by column: a `datasets.Dataset` iterated row by row
    formats every row (0.5 ms per Gaia XP row, five times this)."""
    table = table.combine_chunks()
    columns = {}
    for name in table.column_names:
        col = table.column(name)
        col = col.chunk(0) if col.num_chunks == 1 else pa.array([], col.type)  # combine_chunks: one chunk unless empty
        if pa.types.is_list(col.type) or pa.types.is_large_list(col.type) or pa.types.is_fixed_size_list(col.type):
            if pa.types.is_fixed_size_list(col.type):
                offsets = (np.arange(len(col) + 1) + col.offset) * col.type.list_size
            else:
                offsets = col.offsets.to_numpy()
            # only this table's values: a batch can be a slice of a whole memory-mapped dataset, whose bool masks
            # would otherwise be copied whole for every batch
            values = col.values.slice(offsets[0], offsets[-1] - offsets[0]).to_numpy(zero_copy_only=False)
            offsets = offsets - offsets[0]
            null = col.is_null().to_numpy(zero_copy_only=False)
            columns[name] = [None if null[i] else values[offsets[i]:offsets[i + 1]] for i in range(len(col))]
        else:
            columns[name] = col.to_pylist()
    return [{name: columns[name][i] for name in columns} for i in range(table.num_rows)]


def dataset_spectra(dataset, batch_size: int = 1024) -> list[Spectrum]:
    """Every row of a `datasets.Dataset` in the package's schema (its row selection honoured) as a `Spectrum`
    (`row_to_spectrum`), read a batch of rows at a time."""
    rows = dataset.with_format("arrow").iter(batch_size=batch_size)
    return [row_to_spectrum(row) for batch in rows for row in arrow_rows(batch)]


def row_to_spectrum(row: dict) -> Spectrum:
    """A dataset row back into a `Spectrum` (labels go into ``meta['labels']``). Its flux is marked normalised
    (``meta['normalized'] = True``): prediction reads it exactly as the training collator does."""
    labels = {k: row[k] for k in row if k not in SPECTRUM_COLUMNS and not k.endswith("_err")}
    ivar = row.get("ivar")
    mask = row.get("mask")
    lsf = row.get("lsf_sigma")
    return Spectrum(
        wavelength=np.asarray(row["wavelength"], np.float64),
        flux=np.asarray(row["flux"], np.float64),
        ivar=np.asarray(ivar) if ivar is not None and len(ivar) else None,
        mask=np.asarray(mask, bool) if mask is not None and len(mask) else None,
        lsf_sigma=(lsf[0] if len(lsf) == 1 else np.asarray(lsf)) if lsf is not None and len(lsf) else None,
        instrument=row.get("instrument"),
        meta={"object_id": row.get("object_id"), "labels": labels, "normalized": True},
    )
