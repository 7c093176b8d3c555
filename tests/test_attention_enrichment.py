"""Attention measured on known lines (spectrafm_hf.lines): windows, enrichment, line labels on `pipe.attention`
and `spectrafm attention`, and benchmarks/attention_enrichment.py at toy scale."""

import sys

import numpy as np
import pandas as pd
import pytest
from conftest import REPO, TESTS, TINY, fake_apogee_spectrum

from spectrafm_hf.lines import (LABEL_LINE_SETS, attention_enrichment, enrichment_summary, line_table, line_windows,
                                nearest_line_names, top_attended_lines)

sys.path.insert(0, str(REPO / "benchmarks"))


def test_windows_are_plus_minus_half_width():
    wl = np.array([99.4, 99.55, 100.0, 100.45, 100.6, 101.0])
    assert line_windows(wl, [100.0]).tolist() == [False, True, True, True, False, False]
    assert line_windows(wl, [100.0, 101.0], half_width=0.05).tolist() == [False, False, True, False, False, True]
    assert not line_windows(wl, []).any()
    with pytest.raises(ValueError, match="half_width"):
        line_windows(wl, [100.0], half_width=0)


def test_enrichment_of_a_constructed_map():
    wl = np.arange(15200.0, 15300.0, 0.2)  # 500 pixels
    lines = [15220.0, 15250.0, 15280.1]
    inside = np.zeros(wl.size, bool)
    for c in lines:
        inside |= np.abs(wl - c) <= 0.5
    att = np.where(inside, 4.0, 1.0)
    att[:50] = np.nan  # unused pixels (no line there) must not count in either fraction
    used = np.isfinite(att)
    n_in, n_out = (inside & used).sum(), (~inside & used).sum()
    r = attention_enrichment((wl, att), np.array(lines))
    assert r["n_pixels"] == 450
    assert r["pixel_fraction"] == pytest.approx(n_in / 450)
    assert r["attention_fraction"] == pytest.approx(4 * n_in / (4 * n_in + n_out))
    assert r["enrichment"] == pytest.approx(4 * 450 / (4 * n_in + n_out))
    # a uniform map is not enriched; a map only on the lines is enriched by 1 / pixel fraction
    assert attention_enrichment((wl, np.ones(wl.size)), np.array(lines))["enrichment"] == pytest.approx(1.0)
    only = attention_enrichment((wl, inside.astype(float)), np.array(lines))
    assert only["enrichment"] == pytest.approx(wl.size / inside.sum())
    # the same from a pipe.attention-shaped table, and a line set given by name
    table = pd.DataFrame({"wavelength": wl, "attention": att})
    assert attention_enrichment(table, np.array(lines)) == r
    assert attention_enrichment(table, "Fe I")["pixel_fraction"] > 0
    assert attention_enrichment(table, inside)["enrichment"] == pytest.approx(r["enrichment"])  # a pixel mask
    with pytest.raises(ValueError, match="as long as the attention map"):
        attention_enrichment(table, inside[:10])
    with pytest.raises(ValueError, match="no used pixel"):
        attention_enrichment((wl, np.full(wl.size, np.nan)), lines)
    with pytest.raises(ValueError, match="column"):
        attention_enrichment(pd.DataFrame({"wavelength": wl}), lines)


def test_summary_is_ratio_of_mean_fractions_with_an_error():
    per = pd.DataFrame({"attention_fraction": [0.2, 0.4, 0.3], "pixel_fraction": [0.1, 0.1, 0.1]})
    s = enrichment_summary(per)
    assert s["n_stars"] == 3 and s["enrichment"] == pytest.approx(3.0)
    assert 0 < s["enrichment_err"] < 1 and s["enrichment_p16"] < 3.0 < s["enrichment_p84"]
    assert enrichment_summary(per.iloc[[0, 0]])["enrichment_err"] == pytest.approx(0)


def test_line_sets():
    fe = line_table(15100, 17000, "Fe I")
    mg, oh, atomic, mol, every = (line_table(15100, 17000, s) for s in ("Mg I", "OH", "atomic", "molecular", "all"))
    assert set(fe["species"]) == {"Fe I"} and set(mg["species"]) == {"Mg I"} and set(oh["species"]) == {"OH"}
    assert set(mol["species"]) == {"OH", "CO", "CN"} and not set(atomic["species"]) & {"OH", "CO", "CN"}
    assert 100 < len(fe) < 400 and len(mg) > 10 and len(oh) > 100  # strong lines only, not the whole list
    assert len(every) == len(atomic) + len(mol) and len(line_table(15100, 17000, "Fe I", strong=False)) > len(fe)
    assert (np.diff(every["wavelength"]) >= 0).all()
    # Mg I 15765.842 A (air) is one of the H band's strongest lines: in the strong set at its vacuum wavelength
    assert np.abs(mg["wavelength"] - 15770.15).min() < 0.05
    assert set(LABEL_LINE_SETS) == {"TEFF", "LOGG", "O_FE", "MG_FE", "FE_H"}
    with pytest.raises(ValueError, match="unknown species.*'O I'"):
        line_table(species="O I")


def test_pixels_are_named_after_the_nearest_strong_line():
    fe = line_table(15100, 17000, "Fe I")["wavelength"].to_numpy()
    every = line_table(15100, 17000)["wavelength"].to_numpy()
    i = np.searchsorted(every, fe)
    isolation = np.minimum(fe - every[np.maximum(i - 1, 0)], every[np.minimum(i + 1, every.size - 1)] - fe)
    lone = fe[np.argmax(np.where(isolation > 0, isolation, 0))]  # the Fe I line farthest from any other strong line
    gaps = np.diff(every)
    empty = every[np.argmax(gaps)] + gaps.max() / 2  # the middle of the widest gap between strong lines
    names = nearest_line_names([lone - 0.3, lone, lone + 0.49, empty])
    assert names.tolist()[:3] == [f"Fe I {lone:.2f}"] * 3 and names[3] == ""


def test_attention_table_carries_line_labels(tiny_pipeline, rng):
    spec = fake_apogee_spectrum(rng, n=600, start=2000)
    att = tiny_pipeline.attention(spec, "FE_H")
    assert att["line"].tolist() == nearest_line_names(spec.wavelength).tolist()
    named = att["line"] != ""
    assert 0 < named.mean() < 1 and att.loc[named, "line"].str.match(r"^(\w+ I+|OH|CO|CN) \d{5}\.\d\d$").all()
    top = top_attended_lines(att, n=3)
    assert len(top) == 3 and [t[2] for t in top] == sorted((t[2] for t in top), reverse=True)
    for w, name, frac in top:
        assert frac == pytest.approx(att.loc[att["line"] == name, "attention"].sum() / att["attention"].sum())
        assert name.endswith(f"{w:.2f}")
    # all labels in one pass give the same maps as one label at a time (decoder queries only cross-attend)
    maps = tiny_pipeline._attention_maps(spec, tiny_pipeline.label_names)
    k = tiny_pipeline.label_names.index("FE_H")
    np.testing.assert_allclose(maps[:, k], att["attention"], rtol=1e-5, equal_nan=True)


def test_cli_attention_names_the_most_attended_lines(tmp_path, capsys):
    from spectrafm_hf.cli import main

    out = tmp_path / "att.csv"
    assert main(["attention", str(TESTS / "fixtures" / "apogee" / "apVisit-r13-5095-55844-128.fits"), "--model",
                 str(TINY), "--label", "MG_FE", "-o", str(out)]) == 0
    err = capsys.readouterr().err
    table = pd.read_csv(out)
    assert "line" in table.columns
    best = top_attended_lines(table.fillna({"line": ""}), n=1)[0][1]
    assert f"most attended lines: {best} (" in err


def test_script_at_toy_scale(tmp_path):
    from attention_enrichment import main, untrained_like

    from spectrafm_hf import SpectraFMPipeline

    csv, png = tmp_path / "e.csv", tmp_path / "e.png"
    table = main(["--model", str(TINY), "--n", "2", "--out", str(csv), "--figure", str(png)])
    saved = pd.read_csv(csv)
    assert len(saved) == 2 * 5 * 9 and saved["primary"].sum() == 10  # models x labels x (8 line sets + continuum)
    prim = saved[saved["primary"]]
    assert dict(zip(prim["label"], prim["line_set"])) == LABEL_LINE_SETS
    assert (saved["enrichment"] > 0).all() and (saved["n_stars"] == 2).all()
    assert not np.allclose(table.loc[table.model == "trained", "enrichment"],
                           table.loc[table.model == "untrained", "enrichment"])
    assert png.read_bytes()[:4] == b"\x89PNG"
    pipe = SpectraFMPipeline.from_pretrained(TINY, device="cpu")
    fresh = untrained_like(pipe, seed=0)
    assert fresh.processor is pipe.processor and fresh.model.config.to_dict() == pipe.model.config.to_dict()
    assert not np.allclose(fresh.model.mean_out.weight.detach(), pipe.model.mean_out.weight.detach())
