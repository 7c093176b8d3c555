"""The `spectrafm` command.

    spectrafm predict PATH... [--model NAME_OR_DIR] [--labels FE_H ...] [--output table.csv|.fits|.parquet]
    spectrafm attention FILE --label FE_H --plot attention.png
    spectrafm synth --instrument apogee --n 1000 [--observed] [--snr 100] --output set.parquet
    spectrafm finetune CONFIG.yaml [--field value ...]       (scripts/finetune.py's arguments)
    spectrafm evaluate --model DIR --data set.parquet
    spectrafm info MODEL
    spectrafm push FOLDER ORG/NAME
    spectrafm install [--model spectrafm-base]               (puts the default model in the local HF cache)

Exit codes: 0 = everything worked; 1 = some inputs failed (the others were processed and written); 2 = nothing could
be done (bad arguments, no model, no readable input).
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import sys
import time
import warnings
from pathlib import Path

import numpy as np

DEFAULT_MODEL = "spectrafm-base"
OK, PARTIAL, FAILED = 0, 1, 2
FLUSH_SECONDS = 60.0  # predict --output: rewrite the table at most this often while running (for --resume)
SPECTRA_PER_PREDICTION = 64  # predict: spectra of consecutive files share forward passes (small files fill a batch)


def _err(msg):
    print(f"spectrafm: {msg}", file=sys.stderr)


# ---------------------------------------------------------------------------------------------------- helpers
def expand_paths(items) -> list[str]:
    """Files, folders (every file inside, recursively) and globs -> a sorted list of files."""
    out = []
    for item in items:
        if os.path.isdir(item):
            out += sorted(str(p) for p in Path(item).rglob("*") if p.is_file() and not p.name.startswith("."))
        elif any(c in item for c in "*?["):
            out += sorted(p for p in glob.glob(item, recursive=True) if os.path.isfile(p))
        else:
            out.append(item)
    seen = set()
    return [p for p in out if not (p in seen or seen.add(p))]


def write_table(table, path):
    """Write a pandas table as CSV, FITS (units in the header) or Parquet, atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    suffix = path.suffix.lower()
    if suffix in (".csv", ".txt"):
        table.to_csv(tmp, index=False)
    elif suffix == ".parquet":
        table.to_parquet(tmp, index=False)
    elif suffix in (".fits", ".fit"):
        import pandas as pd
        from astropy.table import Table

        table = table.copy()
        for col in table.columns[table.dtypes == object]:  # FITS has no "object": numbers or strings
            try:
                table[col] = pd.to_numeric(table[col])
            except (ValueError, TypeError):
                table[col] = table[col].map(lambda v: "" if v is None else str(v))
        from astropy.io import fits

        hdu = fits.table_to_hdu(Table.from_pandas(table))
        from .pipeline import label_unit

        for i, col in enumerate(table.columns, start=1):  # units in the header; "dex" is written as text
            unit = label_unit(col)
            if unit:
                hdu.header[f"TUNIT{i}"] = unit
        hdu.header["ORIGIN"] = "spectrafm_hf"
        fits.HDUList([fits.PrimaryHDU(), hdu]).writeto(tmp, overwrite=True)
    else:
        raise ValueError(f"unknown output format {suffix!r}: use .csv, .fits or .parquet")
    os.replace(tmp, path)
    return path


def read_table(path):
    import pandas as pd

    suffix = Path(path).suffix.lower()
    if suffix == ".parquet":
        return pd.read_parquet(path)
    if suffix in (".fits", ".fit"):
        from astropy.table import Table

        return Table.read(path).to_pandas()
    return pd.read_csv(path)


def _load_pipeline(name, device=None, batch_size=None, bf16=False, compile=False):
    from .hub import resolve_model
    from .pipeline import SpectraFMPipeline

    return SpectraFMPipeline.from_pretrained(resolve_model(name), device=device, batch_size=batch_size, bf16=bf16,
                                             compile=compile)


def _prepare(spectrum, pipe):
    """Continuum-normalise spectra that need it: the processor decides (metadata first) and uses the training data's
    continuum method (`SpectraFMProcessor.prepare`)."""
    return pipe.processor.prepare(spectrum)


def _flags(row, pipe) -> str:
    """The row's flags: one source of truth, `spectrafm_hf.pipeline.row_flags` (documented in its FLAGS)."""
    from .pipeline import row_flags

    return row_flags(row, pipe.processor)


def _predict_files(pipe, files, args):
    """One prediction for the spectra of several files; a table per file, in order, each row tagged with its source."""
    spectra = [s for _, file_spectra in files for s in file_spectra]
    if not spectra:
        return []
    table = pipe.predict(spectra, labels=args.labels, seed=args.seed, n_repeats=args.n_repeats)
    table["source"] = [path for path, file_spectra in files for _ in file_spectra]
    table["hdu"] = [s.meta.get("hdu") for s in spectra]
    table["row"] = [s.meta.get("row") for s in spectra]
    if "object_id" not in table:
        table["object_id"] = [s.meta.get("object_id") for s in spectra]
    table["flag"] = [_flags(r, pipe) for r in table.to_dict("records")]
    bounds = np.cumsum([0] + [len(file_spectra) for _, file_spectra in files])
    return [table.iloc[a:b].reset_index(drop=True) for a, b in zip(bounds[:-1], bounds[1:])]


# ---------------------------------------------------------------------------------------------------- commands
def cmd_predict(args) -> int:
    import pandas as pd

    from .instruments import read

    paths = expand_paths(args.paths)
    if not paths:
        _err("no input files found")
        return FAILED
    try:
        pipe = _load_pipeline(args.model, args.device, args.batch_size, args.bf16, args.compile)
    except Exception as e:  # noqa: BLE001 - report any loading problem in one line
        _err(f"cannot load model {args.model!r}: {e}")
        return FAILED
    done_sources = set()
    previous = None
    if args.resume and args.output and Path(args.output).exists():
        previous = read_table(args.output)
        # the same file however it is spelled (relative, absolute, through a link)
        done_sources = {os.path.realpath(p) for p in previous["source"].astype(str)} if "source" in previous else set()
    todo = [p for p in paths if os.path.realpath(p) not in done_sources]
    frames, failures, n_spectra, t0 = [], [], 0, time.time()
    n_done, interrupted, last_flush = 0, False, time.time()

    def result_table():
        return pd.concat(([previous] if previous is not None else []) + frames, ignore_index=True)

    show_progress = len(todo) > 5 and sys.stderr.isatty() and not args.quiet
    iterator = todo
    if show_progress:
        from tqdm.auto import tqdm

        iterator = tqdm(todo, unit="file", desc="predict")
    pending = []  # files read, not yet predicted: (path, spectra)

    def predict_pending():
        nonlocal n_spectra, n_done, last_flush
        try:
            results = _predict_files(pipe, pending, args)
        except Exception:  # noqa: BLE001 - a spectrum the model refuses: find its file, keep the others
            results = []
            for path, spectra in pending:
                try:
                    results += _predict_files(pipe, [(path, spectra)], args)
                except Exception as e:  # noqa: BLE001 - one bad file must not stop the others
                    failures.append((path, f"{type(e).__name__}: {e}"))
                    _err(f"FAILED {path}: {e}")
                    n_done += 1
        for table in results:
            frames.append(table)
            n_spectra += len(table)
            n_done += 1
        pending.clear()
        if args.output and time.time() - last_flush > FLUSH_SECONDS:
            # a hard kill (OOM, SIGKILL, a lost node) keeps everything up to here: rerun with --resume
            write_table(result_table(), args.output)
            last_flush = time.time()

    try:
        for path in iterator:
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    spectra = [_prepare(s, pipe) for s in read(path, strict=True)]
                if not spectra:
                    raise ValueError("no spectrum in this file")
            except Exception as e:  # noqa: BLE001 - one bad file must not stop the others
                failures.append((path, f"{type(e).__name__}: {e}"))
                _err(f"FAILED {path}: {e}")
                n_done += 1
                continue
            pending.append((path, spectra[:1] if args.rows == "first" else spectra))
            if sum(len(file_spectra) for _, file_spectra in pending) >= SPECTRA_PER_PREDICTION:
                predict_pending()
        predict_pending()
    except KeyboardInterrupt:  # Ctrl-C / SIGINT: keep what is done, say how to continue
        interrupted = True
    if frames or previous is not None:
        result = result_table()
        if args.output:
            write_table(result, args.output)
        else:
            print(result.to_csv(index=False), end="")
        if args.plot and len(result) and {"TEFF", "LOGG"} <= set(result.columns) and not interrupted:
            from .plots import plot_kiel

            plot_kiel(result["TEFF"], result["LOGG"], result.get("FE_H"), path=args.plot)
    elapsed = time.time() - t0
    summary = (f"{n_spectra} spectra from {n_done - len(failures)} files in {elapsed:.1f} s"
               + (f"; {len(failures)} files failed" if failures else "")
               + (f"; {len(paths) - len(todo)} already done" if len(paths) != len(todo) else "")
               + (f"; wrote {args.output}" if args.output and (frames or previous is not None) else ""))
    print(summary, file=sys.stderr)
    if interrupted:
        _err(f"interrupted after {n_done} of {len(todo)} files"
             + (f"; rerun with --resume -o {args.output} to do the other {len(todo) - n_done}" if args.output else ""))
        return PARTIAL if frames or previous is not None else FAILED
    if not frames and previous is None and failures:
        return FAILED
    return PARTIAL if failures else OK


def cmd_attention(args) -> int:
    from .instruments import read
    from .plots import plot_attention

    try:
        pipe = _load_pipeline(args.model, args.device)
        spectrum = _prepare(read(args.file, strict=True)[args.index], pipe)
        table = pipe.attention(spectrum, args.label, seed=args.seed)
    except Exception as e:  # noqa: BLE001
        _err(f"{args.file}: {e}")
        return FAILED
    if args.output:
        write_table(table, args.output)
    if args.plot:
        plot_attention(table, args.plot, label=args.label, title=f"{Path(args.file).name}: {args.label} attention")
        print(f"wrote {args.plot}", file=sys.stderr)
    if not args.output and not args.plot:
        print(table.to_csv(index=False), end="")
    return OK


def cmd_synth(args) -> int:
    import pyarrow.parquet as pq

    from . import synth
    from .data import arrays_to_table

    s = synth.generate(args.n, instrument=args.instrument, seed=args.seed, snr=args.snr, observed=args.observed)
    table = arrays_to_table([f"{args.instrument}-{args.seed}-{i}" for i in range(args.n)], args.instrument,
                            s.wavelength, s.flux, labels=s.labels, label_err=getattr(s, "label_err", None),
                            ivar=getattr(s, "ivar", None), mask=getattr(s, "mask", None))
    out = Path(args.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp")
    pq.write_table(table, tmp)
    os.replace(tmp, out)
    print(f"wrote {args.n} {'observed-domain' if args.observed else 'synthetic'} {args.instrument} spectra to {out}",
          file=sys.stderr)
    return OK


def cmd_finetune(args) -> int:
    from .training.run import parse_args, run_training

    model_args, data_args, training_args = parse_args(args.rest)
    if not model_args.model_name_or_path:
        model_args.model_name_or_path = DEFAULT_MODEL
    try:
        _, metrics = run_training(model_args, data_args, training_args)
    except (ValueError, KeyError, FileNotFoundError) as e:  # bad data or arguments: one clear line, exit 2
        _err(f"finetune: {e}")
        return FAILED
    print(json.dumps({k: v for k, v in metrics.items() if k.endswith(("rmse", "coverage68"))}, indent=1))
    print(f"wrote {Path(training_args.output_dir) / 'final'}", file=sys.stderr)
    return OK


def cmd_evaluate(args) -> int:
    import datasets

    from .data import row_to_spectrum
    from .training.metrics import label_metrics

    try:
        pipe = _load_pipeline(args.model, args.device)
        ds = datasets.Dataset.from_parquet(args.data) if args.data.endswith(".parquet") else \
            datasets.load_from_disk(args.data)
    except Exception as e:  # noqa: BLE001
        _err(str(e))
        return FAILED
    names = args.labels or pipe.label_names
    missing = [n for n in names if n not in ds.column_names]
    if args.labels and missing:  # asked for by name: the data must have them
        _err(f"{args.data}: no column for the labels {missing}; the columns found are {ds.column_names}")
        return FAILED
    if len(missing) == len(names):
        _err(f"{args.data}: none of the model's labels {names} is a column; the columns found are {ds.column_names}")
        return FAILED
    if missing:
        _err(f"note: {args.data} has no column for {missing}; metrics for the others")
    table = pipe.predict([row_to_spectrum(r) for r in ds], labels=names, seed=args.seed)
    metrics = {}
    for name in names:
        if name in ds.column_names:
            true = np.asarray(ds[name], float)
            table[f"{name}_true"] = true
            metrics[name] = label_metrics(table[name], true, table[f"{name}_err"])
    if args.output:
        write_table(table, args.output)
    print(json.dumps(metrics, indent=1))
    return OK


def cmd_info(args) -> int:
    from .hub import resolve_model

    try:
        pipe = _load_pipeline(args.model, "cpu")
    except Exception as e:  # noqa: BLE001
        _err(f"cannot load {args.model!r}: {e}")
        return FAILED
    cfg, proc = pipe.model.config, pipe.processor
    path = Path(resolve_model(args.model))
    print(f"model:       {args.model} ({path})")
    print(f"parameters:  {pipe.model.num_parameters():,}  (hidden {cfg.hidden_size}, context {cfg.context_length})")
    print(f"labels:      {', '.join(cfg.label_names)}")
    for n, c, s in zip(proc.label_names, proc.label_centers, proc.label_scales):
        print(f"  {n:8s} centre {c:10.4g}  scale {s:8.4g}")
    cov = proc.wavelength_coverage or "not recorded"
    print(f"wavelength:  {cov} A (vacuum)")
    print(f"flux:        {proc.flux_normalization} normalisation"
          + (", divided by the median first" if proc.divide_by_median else ""))
    info_path = path / "training_info.json"
    if info_path.is_file():
        info = json.loads(info_path.read_text())
        print(f"trained:     {info.get('created')}; data {info.get('data')}")
    card = path / "README.md"
    if card.is_file():
        print("card:        " + card.read_text().split("\n---\n", 1)[-1].strip().splitlines()[0][:100])
    return OK


def cmd_push(args) -> int:
    from . import hub

    if not hasattr(hub, "push_pipeline"):
        _err("this version cannot push")
        return FAILED
    try:
        info = hub.push_pipeline(args.folder, args.repo_id, private=args.private)
    except Exception as e:  # noqa: BLE001
        _err(f"push failed: {e}")
        return FAILED
    print(f"pushed {args.folder} to {args.repo_id}: {getattr(info, 'commit_url', info)}")
    return OK


def cmd_install(args) -> int:
    from . import hub

    src = hub.resolve_model(args.model)
    if not Path(src).is_dir():
        _err(f"{args.model!r} is neither a folder nor a checkpoint embedded in the package")
        return FAILED
    dest = hub.install_to_cache(src, repo_id=args.repo_id or Path(args.model).name)
    print(f"installed {src} as {args.repo_id or Path(args.model).name} in {dest}")
    return OK


# ---------------------------------------------------------------------------------------------------- parser
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="spectrafm",
        description="Stellar labels (Teff, logg, [Fe/H], [Mg/Fe], [O/Fe]) with uncertainties from spectra of any "
                    "instrument, with SpectraFM (Koblischke & Bovy 2024).",
        epilog="Exit codes: 0 ok, 1 some inputs failed (the rest were written), 2 nothing could be done.",
    )
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def model_opts(q):
        q.add_argument("--model", default=DEFAULT_MODEL, help="folder, embedded name or Hub id (default: %(default)s)")
        q.add_argument("--device", default=None, help="cpu / cuda (default: cuda when available)")
        q.add_argument("--seed", type=int, default=0, help="seed of the pixel subsets (default: 0)")

    q = sub.add_parser("predict", help="labels for spectrum files (any supported format, auto-detected)",
                       description="Predict labels for files, folders or globs. One row per spectrum: each label, its "
                                   "1-sigma uncertainty and between-subset scatter, pixels used, a flag when the "
                                   "spectrum lies outside the model's training domain, and the source file/HDU/row. "
                                   "Files that fail are reported and skipped.")
    q.add_argument("paths", nargs="+", help="files, folders or globs")
    model_opts(q)
    q.add_argument("--labels", nargs="+", default=None, help="labels to predict (default: all the model's)")
    q.add_argument("--output", "-o", default=None, help="table.csv | table.fits | table.parquet (default: stdout)")
    q.add_argument("--resume", action="store_true",
                   help="skip files already in --output and append the rest (the table is rewritten every minute "
                        "while running and on Ctrl-C, so an interrupted run can be resumed)")
    q.add_argument("--rows", choices=["all", "first"], default="all",
                   help="for multi-spectrum files: every spectrum or only the first (e.g. apStar's combined row)")
    q.add_argument("--n-repeats", type=int, default=1, help="independent pixel permutations per spectrum")
    q.add_argument("--batch-size", type=int, default=None,
                   help="pixel subsets per forward pass (default: sized to the CPU cache; 512 on a GPU)")
    q.add_argument("--bf16", action="store_true",
                   help="bfloat16 autocast: for GPUs and CPUs with bf16 units (AVX-512 BF16, AMX); slow on others")
    q.add_argument("--compile", action="store_true",
                   help="torch.compile the network: ~1.1x faster on many spectra, after a first call of tens of s")
    q.add_argument("--plot", default=None, help="also write a Kiel diagram of the predictions (PNG)")
    q.add_argument("--quiet", action="store_true", help="no progress bar")
    q.set_defaults(func=cmd_predict)

    q = sub.add_parser("attention", help="where a label query looks, per wavelength (table and/or plot)")
    q.add_argument("file")
    model_opts(q)
    q.add_argument("--label", default="FE_H")
    q.add_argument("--index", type=int, default=0, help="which spectrum of a multi-spectrum file (default 0)")
    q.add_argument("--plot", default=None, help="PNG with the spectrum, the attention and known lines")
    q.add_argument("--output", "-o", default=None, help="attention table (.csv/.fits/.parquet)")
    q.set_defaults(func=cmd_attention)

    q = sub.add_parser("synth", help="make a synthetic (or observed-domain) set of spectra as Parquet")
    q.add_argument("--instrument", default="apogee")
    q.add_argument("--n", type=int, default=1000)
    q.add_argument("--seed", type=int, default=0)
    q.add_argument("--snr", type=float, default=None, help="add noise at this S/N")
    q.add_argument("--observed", action="store_true", help="the observed domain (realism layer, physics gap)")
    q.add_argument("--output", "-o", required=True, help="a .parquet file in the package's dataset schema")
    q.set_defaults(func=cmd_synth)

    q = sub.add_parser("finetune", help="fine-tune a checkpoint (same arguments as scripts/finetune.py)",
                       description="spectrafm finetune CONFIG.yaml [--field value ...]; see scripts/configs/.")
    q.add_argument("rest", nargs=argparse.REMAINDER)
    q.set_defaults(func=cmd_finetune)

    q = sub.add_parser("evaluate", help="metrics of a model on a labelled set (Parquet in the dataset schema)")
    model_opts(q)
    q.add_argument("--data", required=True, help="a .parquet file (e.g. from `spectrafm synth`) or a saved dataset")
    q.add_argument("--labels", nargs="+", default=None)
    q.add_argument("--output", "-o", default=None, help="per-star predictions table")
    q.set_defaults(func=cmd_evaluate)

    q = sub.add_parser("info", help="what a model predicts, from which wavelengths, trained on what")
    q.add_argument("model", nargs="?", default=DEFAULT_MODEL)
    q.set_defaults(func=cmd_info)

    q = sub.add_parser("push", help="publish a model folder (with its card) to the Hugging Face Hub")
    q.add_argument("folder")
    q.add_argument("repo_id")
    q.add_argument("--private", action="store_true")
    q.set_defaults(func=cmd_push)

    q = sub.add_parser("install", help="put a model into the local HF cache so AutoModel.from_pretrained(name) "
                                       "works offline")
    q.add_argument("--model", default=DEFAULT_MODEL)
    q.add_argument("--repo-id", default=None, help="name in the cache (default: the model's name)")
    q.set_defaults(func=cmd_install)
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except KeyboardInterrupt:
        return FAILED


if __name__ == "__main__":
    sys.exit(main())
