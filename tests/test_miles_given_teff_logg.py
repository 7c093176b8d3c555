"""benchmarks/miles_given_teff_logg.py at toy scale (the tiny MILES preset: committed 40-star subset, random emulator):
models trained with Teff and logg (or Teff alone) as input tokens, read with and without them, and with a Teff from
the continuum's colours."""

import contextlib
import importlib.util
import io
import json

import pandas as pd
import pytest
from conftest import REPO


@pytest.mark.parametrize("given", [["TEFF", "LOGG"], ["TEFF"]])
def test_given_teff_logg_trains_with_inputs_and_reads_both_ways(tmp_path, given):
    spec = importlib.util.spec_from_file_location("miles_given", REPO / "benchmarks" / "miles_given_teff_logg.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    out = tmp_path / "given.json"
    colour = ["--colour_bands", "5500", "7410", "4"] if given == ["TEFF"] else []
    noise = ["--input_noise", "TEFF=250"] if colour else []   # the models learn how far to trust a colour Teff
    with contextlib.redirect_stdout(io.StringIO()):
        assert bench.main(["--config", str(REPO / "scripts/configs/miles_fewshot_tiny.yaml"),
                           "--output_dir", str(tmp_path / "runs"), "--out", str(out), "--given", *given, *noise,
                           *colour]) == 0
    result = json.loads(out.read_text())
    assert result["given"] == given and result["input_noise"] == ({"TEFF": 250.0} if noise else {})
    assert result["command"].endswith(f"--given {' '.join(given)} --input_prob 0.5"
                                      + " --input_noise TEFF=250 --colour_bands 5500 7410 4" * bool(colour))
    ways = ("spectrum_only", "given") + ("colour_teff",) * bool(colour)
    rows = {f"{m}_{w}" for m in ("synthetic_only", "spectrafm") for w in ways} | ({"colour_teff"} if colour else set())
    assert set(result["draws"]) == {"77", "78"} and set(result["mean_of_draws"]) == rows
    for draw in result["draws"].values():
        assert set(draw) == rows
        for name, row in draw.items():
            if name != "colour_teff":
                assert row["all"]["n"] > 0 and row["feh_lt_-1"]["n"] <= row["all"]["n"]
        # the given labels reach the network: the same model reads the stars differently with them
        for model in ("synthetic_only", "spectrafm"):
            assert draw[f"{model}_given"]["all"]["bias"] != draw[f"{model}_spectrum_only"]["all"]["bias"]
            if colour:   # told another Teff, it reads them differently again
                assert draw[f"{model}_colour_teff"]["all"]["bias"] != draw[f"{model}_given"]["all"]["bias"]
    if colour:   # --preset_runs: the mean of the preset's row and the colour-Teff reading, star by star
        preset = tmp_path / "preset"
        (preset / "predictions").mkdir(parents=True)
        for d in ("77", "78"):   # a stand-in for the preset's row: this run's own colour-Teff reading
            reading = pd.read_csv(tmp_path / "runs" / "predictions" / f"spectrafm_colour_teff_draw{d}.csv")
            assert reading.FE_H_pred.notna().all()
            reading.drop(columns="object_id").to_csv(preset / "predictions" / f"spectrafm_draw{d}.csv", index=False)
        with contextlib.redirect_stdout(io.StringIO()):   # the trained runs are reused
            assert bench.main(["--config", str(REPO / "scripts/configs/miles_fewshot_tiny.yaml"),
                               "--output_dir", str(tmp_path / "runs"), "--out", str(out), "--given", *given, *noise,
                               *colour, "--preset_runs", str(preset), "--xp_teff", "10", "--xp_data_dir",
                               str(REPO / "tests/fixtures/real_labelled/gaia_xp_apogee_dr17")]) == 0
        again = json.loads(out.read_text())
        assert again["command"].endswith(f"--xp_teff 10 --preset_runs {preset}")
        assert again["xp_teff_model"]["n_train"] >= 50   # learnt on Gaia XP stars
        for d in ("77", "78"):   # the mean of a reading with itself is that reading
            assert again["draws"][d]["spectrafm_mean_with_colour_teff"] == again["draws"][d]["spectrafm_colour_teff"]
            # the XP-learnt Teff is another Teff: the same model reads the stars differently with it
            assert again["draws"][d]["spectrafm_xp_teff"] != again["draws"][d]["spectrafm_colour_teff"]
            assert set(again["draws"][d]["xp_teff"]) == {"feh_lt_-1", "feh_ge_-1"}
        assert set(again["ratio_colour_teff"]) == {f"{m}_{t}" for t in ("colour_teff", "xp_teff") for m in
                                                   ("synthetic_only", "spectrafm", "spectrafm_mean_with")}
    for run in ("pretrain_synthetic", "spectrafm_draw77"):  # trained with the inputs, as the docstring says
        info = json.loads((tmp_path / "runs" / run / "final" / "training_info.json").read_text())
        assert _find(info, "input_label_names") == given and _find(info, "input_label_prob") == 0.5
        assert _find(info, "input_label_noise") == ({"TEFF": 250.0} if noise else {})


def _find(tree, key):
    """The first value of ``key`` anywhere in a nested dict / list (None if absent)."""
    if isinstance(tree, dict):
        if key in tree:
            return tree[key]
        tree = list(tree.values())
    for item in tree if isinstance(tree, list) else ():
        found = _find(item, key)
        if found is not None:
            return found
    return None


REFUSED = [   # (arguments, what the error names): each refused before any data is read
    (["--given", "TEFF", "LOGG", "--colour_bands", "5500", "7410", "4"], "--given TEFF"),
    (["--given", "TEFF", "--preset_runs", "runs/miles_fewshot_cpu_v4"], "add --colour_bands"),
    (["--given", "TEFF", "--xp_teff", "0.02"], "--xp_teff reads the bands of --colour_bands"),
    (["--given", "TEFF", "--input_noise", "TEFF:250"], "NAME=SIGMA"),
    (["--given", "TEFF", "--input_noise", "LOGG=0.2"], "which --given does not give"),
]


@pytest.mark.parametrize("args, message", REFUSED)
def test_bad_arguments_are_refused_by_name(args, message):
    spec = importlib.util.spec_from_file_location("miles_given", REPO / "benchmarks" / "miles_given_teff_logg.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    with pytest.raises(SystemExit), contextlib.redirect_stderr(io.StringIO()) as err:
        bench.main(args)
    assert message in err.getvalue()
