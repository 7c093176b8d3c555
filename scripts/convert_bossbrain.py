#!/usr/bin/env python
"""Convert the bossbrain optical emulators (PyPI bossbrain 1.0.12, MIT) to a plain npz for `spectrafm_hf.synth.optical`.

    python scripts/convert_bossbrain.py                       # pip-downloads the wheel into the cache, converts
    python scripts/convert_bossbrain.py --source WHEEL_OR_DIR [--output FILE] [--wmin 3500 --wmax 7600]
    ... [--loader_dir DIR]   # a folder where theborg, dill, dlnpyutils are importable (else a temporary pip --target)

The three pickles are unpickled once, in a subprocess that has theborg / dill / dlnpyutils on its path (installed
with ``pip install --no-deps --target`` into a temporary folder, never into this environment); the output holds
only arrays (weights, label scaling, air wavelengths, the Teff switch points) and is read with allow_pickle=False.
Default output: ``spectrafm_hf.synth.optical.default_emulator_path()`` (the real-data cache, or
``$SPECTRAFM_OPTICAL_EMULATOR``).
"""

import argparse
import sys

from spectrafm_hf.synth.optical import convert_bossbrain


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--source", help="bossbrain wheel or a folder with ann_22pars_*.pkl (default: download)")
    p.add_argument("--output")
    p.add_argument("--wmin", type=float, default=3500.0)
    p.add_argument("--wmax", type=float, default=7600.0)
    p.add_argument("--loader_dir")
    a = p.parse_args(argv)
    convert_bossbrain(a.source, a.output, wmin=a.wmin, wmax=a.wmax, loader_dir=a.loader_dir)
    return 0


if __name__ == "__main__":
    sys.exit(main())
