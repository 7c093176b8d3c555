"""Calibrate a checkpoint's reliability statistics and store them in its preprocessor_config.json.

    python benchmarks/reliability_stats.py src/spectrafm_hf/resources/models/spectrafm-base --n-fit 1000 --n-test 1000
    python benchmarks/reliability_stats.py tests/fixtures/tiny-spectrafm --n-fit 400 --n-test 400
    python benchmarks/reliability_stats.py MODEL --domain observed --snr-floor 50     # spectrafm-base since issue 15

On in-domain spectra made like the model's training data, seeds never used in training -- ``--domain synthetic``:
clean emulated spectra at S/N 200 (`synth.generate(snr=200, continuum="pseudo")`, a stage-1 model);
``--domain observed``: the observed domain (`synth.generate(observed=True, continuum="pseudo")`) with continuum S/N
log-uniform from ``--snr-floor`` (the lowest S/N of the realism augmentation it was trained with) to 600 -- it sets:

- ``continuum``: the training data's continuum method (per-chip polynomial on the APOGEE continuum pixels), applied
  by the processor to raw flux, and ``renormalize_coverage`` (``--renormalize-coverage``, 0.5): already-normalised
  spectra covering at least half the grid are divided again by that fit, so every full spectrum reaches the model
  in its training normalisation whoever normalised it;
- ``snr_range``: the 1st-99th percentile of `spectrum_snr` of the in-domain spectra (``low_snr`` below it);
- ``embedding_mean`` / ``embedding_whitening``: mean and whitening matrix of the encoder embeddings of ``--n-fit``
  spectra; ``embedding_threshold``: the 99th percentile of the Mahalanobis distances of ``--n-test`` OTHER in-domain
  spectra, so ~1 % of in-domain spectra get ``out_of_distribution``.

Writes benchmarks/results/reliability_stats_<model>.json (the numbers, and the flagged fraction on the test set).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from spectrafm_hf import SpectraFMPipeline, synth
from spectrafm_hf.processing_spectrafm import spectrum_snr

FIT_SEED, TEST_SEED = 910_001, 910_002  # training used seeds 0-2 (SpectraFMDatasets' splits)
TRAINING_SNR = 200.0  # spectrafm-base's data: synthetic_apogee, snr=200, continuum="pseudo" (training_info.json)
CONTINUUM = {"method": "continuum_pixels", "instrument": "apogee", "degree": 2}


OBSERVED_SNR_MAX = 600.0  # the top of the APOGEE observed domain's S/N range (synth.APOGEE realism.snr_range)


def in_domain(n, seed, domain="synthetic", snr_floor=None):
    if domain == "synthetic":
        return synth.generate(n, instrument="apogee", seed=seed, snr=TRAINING_SNR, continuum="pseudo",
                              as_spectra=True)
    rng = np.random.default_rng(seed)
    lo = np.log(snr_floor or synth.get_instrument("apogee").realism.snr_range[0])
    snr = np.exp(rng.uniform(lo, np.log(OBSERVED_SNR_MAX), n))
    return synth.generate(n, instrument="apogee", seed=seed, snr=snr, observed=True, continuum="pseudo",
                          as_spectra=True)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model", help="checkpoint folder (its preprocessor_config.json is rewritten)")
    ap.add_argument("--n-fit", type=int, default=1000)
    ap.add_argument("--n-test", type=int, default=1000)
    ap.add_argument("--quantile", type=float, default=0.99)
    ap.add_argument("--dry-run", action="store_true", help="report, do not write the processor")
    ap.add_argument("--domain", choices=["synthetic", "observed"], default="synthetic",
                    help="what the model was trained on last (see above)")
    ap.add_argument("--snr-floor", type=float, default=None, help="observed domain: lowest training S/N")
    ap.add_argument("--renormalize-coverage", type=float, default=0.5,
                    help="re-normalise already-normalised spectra covering this fraction of the grid (-1: never)")
    args = ap.parse_args(argv)
    t0 = time.time()
    pipe = SpectraFMPipeline.from_pretrained(args.model, device="cpu")
    proc = pipe.processor
    proc.continuum = dict(CONTINUUM)
    proc.renormalize_coverage = None if args.renormalize_coverage < 0 else args.renormalize_coverage
    fit = in_domain(args.n_fit, FIT_SEED, args.domain, args.snr_floor)
    test = in_domain(args.n_test, TEST_SEED, args.domain, args.snr_floor)
    snr = np.array([spectrum_snr(proc.prepare(s)) for s in fit])
    proc.snr_range = [float(np.percentile(snr, 1)), float(np.percentile(snr, 99))]
    d_test = proc.fit_embeddings(pipe.embed(fit), pipe.embed(test), quantile=args.quantile)
    # the distance of the fit set itself, for the record (smaller than on held-out spectra)
    result = {
        "model": Path(args.model).name,
        "n_fit": args.n_fit, "n_test": args.n_test, "seeds": [FIT_SEED, TEST_SEED],
        "domain": args.domain,
        "training_snr": TRAINING_SNR if args.domain == "synthetic" else [args.snr_floor, OBSERVED_SNR_MAX],
        "snr_range": proc.snr_range,
        "embedding_dim": len(proc.embedding_mean), "embedding_threshold": proc.embedding_threshold,
        "test_distance_percentiles": dict(zip(["50", "90", "99", "100"],
                                              np.percentile(d_test, [50, 90, 99, 100]).round(3).tolist())),
        "test_flagged_fraction": float(np.mean(d_test > proc.embedding_threshold)),
        "seconds": round(time.time() - t0, 1),
    }
    if not args.dry_run:
        proc.save_pretrained(args.model)
    out = Path(__file__).parent / "results" / f"reliability_stats_{result['model']}.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
