#!/usr/bin/env python
"""The default-model goal of issue 15 on the `make demo` observed-domain set (300 stars, seed 12345, normalised by
their true continuum as the demo makes them): RMSE, bias and 68 % coverage per label for several models, with and
without the processor's re-normalisation of full spectra (``renormalize_coverage``).

    python benchmarks/observed_domain_models.py NAME=MODEL [NAME=MODEL ...] [--out benchmarks/results/observed_domain_models.json]
    # e.g. new=spectrafm-base synthetic=spectrafm-synthetic old=/tmp/old-spectrafm-base (git show 73def33:...)
"""

import argparse
import json
from pathlib import Path

from spectrafm_hf import SpectraFMPipeline, synth
from spectrafm_hf.training.metrics import label_metrics

REPO = Path(__file__).resolve().parents[1]


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("models", nargs="+", help="NAME=MODEL (name, folder or Hub id)")
    ap.add_argument("--n", type=int, default=300)
    ap.add_argument("--seed", type=int, default=12345)
    ap.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "observed_domain_models.json"))
    args = ap.parse_args(argv)
    sets = {"true": synth.generate(args.n, observed=True, seed=args.seed, continuum="true")}
    out = {"command": "python benchmarks/observed_domain_models.py " + " ".join(args.models), "n": args.n,
           "seed": args.seed, "results": {}}
    for item in args.models:
        name, model = item.split("=", 1)
        pipe = SpectraFMPipeline.from_pretrained(model, device="cpu")
        stored = pipe.processor.renormalize_coverage
        for renorm in sorted({None, stored or 0.5}, key=str):
            pipe.processor.renormalize_coverage = renorm
            for cont, obs in sets.items():
                pred = pipe.predict(obs.to_spectra())
                key = f"{name}|continuum={cont}|renormalize={renorm}"
                out["results"][key] = {
                    n: {k: round(float(v), 4) for k, v in label_metrics(
                        pred[n], obs.true_labels[:, synth.LABEL_NAMES.index(n)], pred[f"{n}_err"]).items()
                        if k in ("rmse", "bias", "coverage68")} for n in pipe.label_names}
                print(key, json.dumps({n: m["rmse"] for n, m in out["results"][key].items()}))
    Path(args.out).write_text(json.dumps(out, indent=1) + "\n")


if __name__ == "__main__":
    main()
