#!/usr/bin/env python
"""The main job (`make demo`): the package's default model on real and synthetic spectra, offline.

1. predicts the committed REAL APOGEE DR17 spectra (tests/fixtures/apogee: an apStar, two apVisits, an
   aspcapStar-format file) -> demo_output/labels_apogee_fixtures.csv;
2. predicts 300 held-out "observed-domain" synthetic spectra with known labels -> predicted-vs-true figure,
   calibration figure and a metrics table;
3. draws where the [Fe/H] query looks along the real apStar spectrum, with known Fe lines marked.

    python scripts/demo.py [--model spectrafm-base] [--out demo_output]
"""

import argparse
import json
import sys
import time
import warnings
from pathlib import Path


REPO = Path(__file__).resolve().parents[1]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="spectrafm-base")
    parser.add_argument("--out", default="demo_output")
    parser.add_argument("--n-synthetic", type=int, default=300)
    args = parser.parse_args(argv)
    t0 = time.time()

    from spectrafm_hf import SpectraFMPipeline, read, synth
    from spectrafm_hf.cli import write_table
    from spectrafm_hf.plots import known_lines, plot_attention, plot_calibration, plot_kiel, plot_predicted_vs_true
    from spectrafm_hf.training.metrics import label_metrics

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    pipe = SpectraFMPipeline.from_pretrained(args.model)
    print(f"model {args.model}: {pipe.model.num_parameters():,} parameters, labels {pipe.label_names}")

    # 1. real APOGEE files
    spectra = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for path in sorted((REPO / "tests" / "fixtures" / "apogee").glob("*.fits")):
            spectra += read(path)  # raw flux is continuum-normalised by the processor, as in training
    table = pipe.predict(spectra)
    table["source"] = [Path(s.meta["source"]).name for s in spectra]
    write_table(table, out / "labels_apogee_fixtures.csv")
    cols = ["source", "TEFF", "TEFF_err", "LOGG", "LOGG_err", "FE_H", "FE_H_err", "n_pixels", "snr", "flag"]
    print("\nReal APOGEE DR17 spectra of 2M19485057+5005279 (Doppler header: Teff 5226, logg 5.0, [Fe/H] -0.22)"
          " and two apVisit stars:")
    print(table[cols].round(3).to_string(index=False))

    # 2. observed-domain synthetic stars with known labels
    obs = synth.generate(args.n_synthetic, observed=True, seed=12345)
    syn = obs.to_spectra()
    pred = pipe.predict(syn)
    metrics = {}
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(pipe.label_names), figsize=(4 * len(pipe.label_names), 4))
    z = {}
    for ax, (k, name) in zip(axes, enumerate(pipe.label_names)):
        true = obs.true_labels[:, synth.LABEL_NAMES.index(name)]
        metrics[name] = label_metrics(pred[name], true, pred[f"{name}_err"])
        plot_predicted_vs_true(true, pred[name], pred[f"{name}_err"], None, label=name, ax=ax)
        z[name] = (pred[name] - true) / pred[f"{name}_err"]
    fig.suptitle(f"{args.model} on {args.n_synthetic} observed-domain synthetic APOGEE spectra")
    fig.tight_layout()
    fig.savefig(out / "predicted_vs_true.png", dpi=110)
    plt.close(fig)
    plot_calibration(z, out / "calibration.png", title="Coverage of the predicted intervals")
    plot_kiel(pred["TEFF"], pred["LOGG"], pred["FE_H"], path=out / "kiel.png",
              title=f"Kiel diagram of the predictions ({args.n_synthetic} observed-domain stars)")
    (out / "metrics_observed_synthetic.json").write_text(json.dumps(metrics, indent=2))
    print(f"\n{args.n_synthetic} observed-domain synthetic stars (true labels known):")
    for name, m in metrics.items():
        print(f"  {name:6s} RMSE {m['rmse']:.4g}  bias {m['bias']:+.3g}  robust scatter {m['robust_scatter']:.3g}"
              f"  68% coverage {m['coverage68']:.2f}")

    # 3. attention over the real apStar spectrum
    apstar = next(s for s in spectra if "apStar" in s.meta["source"])
    att = pipe.attention(apstar, "FE_H")
    plot_attention(att[(att.wavelength > 16050) & (att.wavelength < 16300)], out / "attention_FE_H.png",
                   label="FE_H", title="Where the [Fe/H] query looks: real apStar, 16050-16300 A (Fe I lines marked)",
                   lines=known_lines(16050, 16300, "Fe I", top=15))
    print(f"\nwrote {out}/: labels_apogee_fixtures.csv, predicted_vs_true.png, calibration.png, "
          f"kiel.png, attention_FE_H.png, metrics_observed_synthetic.json  ({time.time() - t0:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
