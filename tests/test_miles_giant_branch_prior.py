"""benchmarks/miles_giant_branch_prior.py on the committed 40-star MILES subset: only non-test, metal-rich giants are
read, and their offsets are measured from the package's own RGB relation."""

import importlib.util
import json

import numpy as np
from conftest import REPO


def _bench():
    spec = importlib.util.spec_from_file_location("miles_giant_branch_prior",
                                                  REPO / "benchmarks" / "miles_giant_branch_prior.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    return bench


def test_offsets_come_from_non_test_metal_rich_giants_only(tmp_path):
    bench = _bench()
    out = tmp_path / "prior.json"
    config = REPO / "scripts" / "configs" / "miles_fewshot_tiny.yaml"
    assert bench.main(["--config", str(config), "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    import miles_fewshot
    from spectrafm_hf.training.presets import read_yaml

    arrays, _, _, keep = miles_fewshot.miles_tables(read_yaml(config.read_text()))
    teff, logg, feh = (np.asarray(arrays.labels[n], float) for n in ("TEFF", "LOGG", "FE_H"))
    test = np.zeros(len(arrays), bool)
    test[arrays.splits["test"]] = True
    chosen = keep & ~test & (feh > -1) & (logg < 3.5)
    assert result["n"] == chosen.sum() > 0
    offset = teff[chosen] - bench.rgb_teff(logg[chosen], feh[chosen])
    assert result["teff_offset_median"] == round(float(np.median(offset)), 1)
    assert bench.rgb_teff(2.0, 0.0) == 3100 + 620 * 2.0  # the relation of LabelPrior.rgb_teff, linear up to logg 2
    assert 250 < result["degenerate_move_off_branch_k_from_logg_1"] < 260
