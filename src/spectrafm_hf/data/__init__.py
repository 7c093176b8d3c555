"""Datasets: the one schema, `datasets` builders for every source, and helpers."""

from .builder import SpectraFMDatasetConfig, SpectraFMDatasets, load_spectra_dataset
from .publish import load_published_dataset, push_dataset
from .schema import (DEFAULT_LABEL_NAMES, arrays_to_table, arrow_rows, column_values, dataset_spectra, features,
                     require_columns, row_to_spectrum, spectra_to_table)

__all__ = [
    "DEFAULT_LABEL_NAMES",
    "SpectraFMDatasetConfig",
    "SpectraFMDatasets",
    "arrays_to_table",
    "arrow_rows",
    "column_values",
    "dataset_spectra",
    "features",
    "load_published_dataset",
    "load_spectra_dataset",
    "push_dataset",
    "require_columns",
    "row_to_spectrum",
    "spectra_to_table",
]
