#!/usr/bin/env python
"""Peak memory while predicting many spectra through `SpectraFMPipeline.predict_stream` (spectra generated lazily,
as a reader would yield them), written to benchmarks/results/predict_memory.json.

    python benchmarks/bench_predict_memory.py [--n 100000] [--model tests/fixtures/tiny-spectrafm] [--pixels 300]
"""

import argparse
import json
import resource
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]


def rss_mb():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=100_000)
    p.add_argument("--model", default=str(REPO / "tests" / "fixtures" / "tiny-spectrafm"))
    p.add_argument("--pixels", type=int, default=300)
    p.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "predict_memory.json"))
    args = p.parse_args()
    from spectrafm_hf import SpectraFMPipeline, Spectrum
    from spectrafm_hf.grids import apogee_wavelength_7514

    pipe = SpectraFMPipeline.from_pretrained(args.model, device="cpu")
    wl = apogee_wavelength_7514()[: args.pixels]
    rng = np.random.default_rng(0)

    def spectra():
        for i in range(args.n):
            yield Spectrum(wavelength=wl, flux=1 - 0.1 * rng.random(wl.size), meta={"object_id": f"s{i}"})

    before = rss_mb()
    t = time.perf_counter()
    n_rows, peaks = 0, []
    for table in pipe.predict_stream(spectra()):
        n_rows += len(table)  # a survey pipeline would append this chunk to its output file here
        peaks.append(rss_mb())
    dt = time.perf_counter() - t
    result = {"n_spectra": n_rows, "pixels_per_spectrum": args.pixels, "model": Path(args.model).name,
              "chunk_size": pipe.chunk_size, "seconds": dt, "spectra_per_s": n_rows / dt,
              "peak_rss_mb_before": before, "peak_rss_mb_after_first_chunk": peaks[0], "peak_rss_mb_end": peaks[-1],
              "command": "python benchmarks/bench_predict_memory.py"}
    Path(args.out).write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
