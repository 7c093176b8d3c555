"""The processor as remote code: saved folders and Hub pushes carry processing_spectrafm.py and spectrum.py with an
``auto_map``, and ``AutoFeatureExtractor.from_pretrained(..., trust_remote_code=True)`` gives a working processor in
a process where ``spectrafm_hf`` cannot be imported (the same tensors as the package's)."""

import json
import os
import shutil
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
from conftest import TINY, fake_apogee_spectrum
from hub_fixtures import fake_hub  # noqa: F401  (fixture)
from transformers.dynamic_module_utils import get_imports, get_relative_imports

from spectrafm_hf import SpectraFMPipeline, SpectraFMProcessor
from spectrafm_hf.checkpoint_folder import CODE_FILES, PACKAGE_DIR, PROCESSOR_AUTO_MAP
from spectrafm_hf.hub import push_pipeline

ALLOWED = {"numpy", "torch", "transformers"} | set(sys.stdlib_module_names)


@pytest.mark.parametrize("name", CODE_FILES)
def test_code_files_are_self_contained(name):
    """What transformers' loader checks: the packages a file needs (imports outside try blocks) and the files it
    fetches beside it (relative imports, also inside functions) - only numpy/torch/transformers and CODE_FILES."""
    path = PACKAGE_DIR / name
    assert set(get_imports(path)) <= ALLOWED, sorted(set(get_imports(path)) - ALLOWED)
    assert {f"{m}.py" for m in get_relative_imports(path)} <= set(CODE_FILES), get_relative_imports(path)


def test_saved_folder_maps_the_processor(tmp_path):
    SpectraFMPipeline.from_pretrained(TINY, device="cpu").save_pretrained(tmp_path / "saved")
    for name in CODE_FILES:
        assert (tmp_path / "saved" / name).read_bytes() == (PACKAGE_DIR / name).read_bytes()
    for name in ("preprocessor_config.json", "config.json"):
        auto_map = json.loads((tmp_path / "saved" / name).read_text())["auto_map"]
        assert auto_map["AutoFeatureExtractor"] == PROCESSOR_AUTO_MAP["AutoFeatureExtractor"]


def test_processor_takes_a_dict_and_another_spectrum_class(rng):
    proc = SpectraFMProcessor.from_pretrained(TINY)
    s = fake_apogee_spectrum(rng, n=300)
    s.meta["normalized"] = True
    as_dict = {"wavelength": s.wavelength, "flux": s.flux, "ivar": s.ivar, "meta": {"normalized": True}}
    a, b = proc([s], seed=3), proc([as_dict], seed=3)
    for k in a:
        torch.testing.assert_close(a[k], b[k], equal_nan=True)
    with pytest.raises(TypeError, match="expected a Spectrum"):
        proc.prepare(np.ones(5))


def test_remote_processor_without_the_package(fake_hub, tmp_path, rng):  # noqa: F811
    folder = tmp_path / "saved"
    SpectraFMPipeline.from_pretrained(TINY, device="cpu").save_pretrained(folder)
    bare = tmp_path / "bare"  # no code files, no auto_map: push_pipeline adds them
    shutil.copytree(TINY, bare)
    for name in CODE_FILES:
        (bare / name).unlink(missing_ok=True)
    push_pipeline(bare, "org/spectrafm-remote-proc")

    proc = SpectraFMProcessor.from_pretrained(TINY)
    spectra = [fake_apogee_spectrum(rng, n=n, object_id=f"s{i}") for i, n in enumerate((700, 260))]
    arrays = {}
    for i, s in enumerate(spectra):
        s.meta["normalized"] = True
        arrays.update({f"wl{i}": s.wavelength, f"flux{i}": s.flux, f"ivar{i}": s.ivar})
    np.savez(tmp_path / "spectra.npz", **arrays)
    expected = {"call": dict(proc(spectra, seed=5)), "subsets": dict(proc.subset_batch(spectra, seed=1)[0])}
    raw = fake_apogee_spectrum(rng, n=300)
    np.savez(tmp_path / "raw.npz", wl=raw.wavelength, flux=raw.flux * 1e4, ivar=raw.ivar / 1e8)

    script = textwrap.dedent("""
        import sys
        sys.modules["spectrafm_hf"] = None  # the package must not be importable here
        import numpy as np, torch
        from transformers import AutoFeatureExtractor
        data = np.load(sys.argv[1])
        spectra = [{"wavelength": data[f"wl{i}"], "flux": data[f"flux{i}"], "ivar": data[f"ivar{i}"],
                    "meta": {"normalized": True}} for i in range(2)]
        out = {}
        for where in (sys.argv[2], "org/spectrafm-remote-proc"):
            proc = AutoFeatureExtractor.from_pretrained(where, trust_remote_code=True)
            assert type(proc).__module__.startswith("transformers_modules."), type(proc).__module__
            out[where] = {"call": dict(proc(spectra, seed=5)), "subsets": dict(proc.subset_batch(spectra, seed=1)[0])}
        raw = np.load(sys.argv[3])
        try:
            proc([{"wavelength": raw["wl"], "flux": raw["flux"], "ivar": raw["ivar"]}])
        except ImportError as e:
            print("RAW:", e)
        torch.save(out, sys.argv[4])
    """)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "TRANSFORMERS_", "PYTHONPATH"))}
    env.update(fake_hub.client_env(tmp_path / "child-hf-home"), OMP_NUM_THREADS="1")
    res = subprocess.run([sys.executable, "-c", script, str(tmp_path / "spectra.npz"), str(folder),
                          str(tmp_path / "raw.npz"), str(tmp_path / "out.pt")],
                         cwd=tmp_path, env=env, capture_output=True, text=True, timeout=180)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "RAW:" in res.stdout and "pip install spectrafm_hf" in res.stdout  # raw flux: says what to install
    got = torch.load(tmp_path / "out.pt")
    assert set(got) == {str(folder), "org/spectrafm-remote-proc"}
    for where, batches in got.items():
        for kind in ("call", "subsets"):
            assert batches[kind].keys() == expected[kind].keys()
            for k, v in expected[kind].items():
                torch.testing.assert_close(batches[kind][k], v, rtol=0, atol=0, equal_nan=True,
                                           msg=f"{where} {kind} {k}")
