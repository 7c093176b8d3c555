"""Linear probes (`spectrafm_hf.linear_probe`, `SpectraFMPipeline.fit_linear_probe`, processor ``linear_probes``): a
label read as a straight line from the frozen model's embedding and label predictions."""

import json

import numpy as np
import pandas as pd
import pytest

from conftest import TINY, fake_apogee_spectrum
from spectrafm_hf import SpectraFMPipeline, SpectraFMProcessor
from spectrafm_hf.linear_probe import apply_probe, fit_generative_probe, fit_ridge_loo


def brute_force_loo(x, y, alpha):
    """Mean squared leave-one-out residual of ridge (standardised on the kept rows, intercept unpenalised)."""
    res = []
    for i in range(len(y)):
        keep = np.arange(len(y)) != i
        probe = fit_ridge_loo(x[keep], y[keep], alphas=[alpha])
        res.append(apply_probe(probe, x[i:i + 1])[0] - y[i])
    return float(np.mean(np.square(res)))


def test_ridge_recovers_a_line_and_its_leave_one_out_error_is_exact(rng):
    x = rng.normal(size=(60, 4)) * [1.0, 10.0, 0.1, 3.0] + [0.0, 5.0, -1.0, 2.0]
    y = x @ [0.5, -0.02, 3.0, 0.0] + 0.7 + rng.normal(0, 0.05, 60)
    probe = fit_ridge_loo(x, y)
    assert probe["n_fit"] == 60 and probe["alpha"] < 1.0
    np.testing.assert_allclose(apply_probe(probe, x), y, atol=0.2)
    assert probe["sigma"] == pytest.approx(0.05, rel=0.35)  # the noise it was given
    # the closed-form leave-one-out residuals: the same as refitting without each row (standardised on all rows
    # differs a little from standardising without the row: compare at a penalty where that barely matters)
    one = fit_ridge_loo(x, y, alphas=[0.01])
    assert one["sigma"] ** 2 == pytest.approx(brute_force_loo(x, y, 0.01), rel=0.05)


def test_the_penalty_is_chosen_by_leave_one_out_error(rng):
    x = rng.normal(size=(30, 25))  # more noise features than the few stars can pin down
    y = x[:, 0] + rng.normal(0, 0.5, 30)
    probe = fit_ridge_loo(x, y, alphas=[1e-3, 1.0, 10.0, 1e4])
    errors = {a: fit_ridge_loo(x, y, alphas=[a])["sigma"] for a in (1e-3, 1.0, 10.0, 1e4)}
    assert probe["alpha"] == min(errors, key=errors.get)
    assert probe["sigma"] == min(errors.values())


def test_bad_probe_input_is_refused_by_name(rng):
    with pytest.raises(ValueError, match="needs >= 5 labelled rows"):
        fit_ridge_loo(rng.normal(size=(6, 2)), [0.1, np.nan, np.nan, 0.2, 0.3, np.nan])
    with pytest.raises(ValueError, match="labels that vary"):
        fit_ridge_loo(rng.normal(size=(10, 2)), np.ones(10))
    with pytest.raises(ValueError, match="alphas must be positive"):
        fit_ridge_loo(rng.normal(size=(10, 2)), rng.normal(size=10), alphas=[0.0])
    with pytest.raises(ValueError, match="reads 3 features"):
        apply_probe(fit_ridge_loo(rng.normal(size=(10, 3)), rng.normal(size=10)), np.zeros((2, 4)))
    with pytest.raises(ValueError, match=r"linear_probes\['FE_H'\] lacks"):
        SpectraFMProcessor(label_names=["TEFF"], linear_probes={"FE_H": {"weights": [1.0]}})


def features_of(y, covariates, rng, p=12, noise=0.5):
    """Features made the generative way: each linear in the target and two covariates, plus noise."""
    slopes, mixing = rng.normal(size=p), rng.normal(size=(2, p))
    emb = 0.3 + np.outer(y, slopes) + covariates @ mixing + rng.normal(0, noise, (len(y), p))
    return np.column_stack([emb, covariates])


def test_the_generative_probe_reads_stars_beyond_its_fitting_range_where_ridge_pulls_them_in(rng):
    """Fitted on targets in [-1, 0.5], read on [-2.5, -1]: the ridge line is pulled towards the fitting mean
    (regression dilution), the generative read-out is not; within the range both read the target."""
    seed = int(rng.integers(1 << 30))
    gen = np.random.default_rng(seed)
    y = np.concatenate([gen.uniform(-1, 0.5, 100), gen.uniform(-2.5, -1, 400)])
    cov = gen.normal(size=(500, 2))
    x = features_of(y, cov, np.random.default_rng(seed + 1))
    fit, far = slice(0, 100), slice(100, None)
    ridge = fit_ridge_loo(x[fit], y[fit])
    generative = fit_generative_probe(x[fit], y[fit], covariates=[12, 13], shrink=0.2)
    assert generative["method"] == "generative" and generative["alpha"] == 0.2 and generative["n_fit"] == 100
    bias = {name: float(np.mean(apply_probe(probe, x[far]) - y[far]))
            for name, probe in (("ridge", ridge), ("generative", generative))}
    assert bias["ridge"] > 0.15 and abs(bias["generative"]) < bias["ridge"] / 3, bias
    inside = apply_probe(generative, x[fit]) - y[fit]
    assert np.sqrt(np.mean(inside**2)) < generative["sigma"] < 0.5  # leave-one-out error is above the in-sample one


def test_the_generative_probe_is_the_least_squares_inversion_of_its_model(rng):
    """Its stored line equals solving the fitted feature model for the target by GLS, computed here directly on
    unstandardised features with a diagonal covariance (shrink 1), and rescaling features changes nothing."""
    y, cov = rng.uniform(-1, 0.5, 80), rng.normal(size=(80, 2))
    x = features_of(y, cov, rng)
    probe = fit_generative_probe(x, y, covariates=[12, 13], shrink=1.0)
    design = np.column_stack([np.ones(80), y, cov])
    coef, *_ = np.linalg.lstsq(design, x[:, :12], rcond=None)
    var = (x[:, :12] - design @ coef).var(0, ddof=1)
    residual = x[:, :12] - coef[0] - cov @ coef[2:]
    direct = residual @ (coef[1] / var) / np.sum(coef[1] ** 2 / var)
    np.testing.assert_allclose(apply_probe(probe, x), direct, atol=1e-9)
    scaled = x * np.linspace(0.1, 30, 14)
    again = fit_generative_probe(scaled, y, covariates=[12, 13], shrink=1.0)
    np.testing.assert_allclose(apply_probe(again, scaled), direct, atol=1e-9)


def test_the_generative_probe_sigma_is_leave_one_out_then_folds(rng, monkeypatch):
    """sigma is the root-mean-square residual of refits without each row; beyond MAX_REFITS rows, of MAX_REFITS
    interleaved folds (so thousands of stars cost MAX_REFITS refits). A refit standardises on its own rows, which
    changes nothing: the read-out does not depend on how the features are scaled."""
    import spectrafm_hf.linear_probe as lp

    y, cov = rng.uniform(-1, 0.5, 24), rng.normal(size=(24, 2))
    x = features_of(y, cov, rng)

    def held_out_sigma(folds):
        res = [y[k] - apply_probe(fit_generative_probe(x[folds != f], y[folds != f], [12, 13]), x[k:k + 1])[0]
               for f in np.unique(folds) for k in np.flatnonzero(folds == f)]
        return float(np.sqrt(np.mean(np.square(res))))

    assert fit_generative_probe(x, y, [12, 13])["sigma"] == pytest.approx(held_out_sigma(np.arange(24)), rel=1e-9)
    monkeypatch.setattr(lp, "MAX_REFITS", 5)
    assert fit_generative_probe(x, y, [12, 13])["sigma"] == pytest.approx(held_out_sigma(np.arange(24) % 5),
                                                                         rel=1e-9)


def test_bad_generative_probe_input_is_refused_by_name(rng):
    x, y = rng.normal(size=(20, 4)), rng.normal(size=20)
    with pytest.raises(ValueError, match="shrink must be within"):
        fit_generative_probe(x, y, [3], shrink=1.5)
    with pytest.raises(ValueError, match="covariates must be column indices"):
        fit_generative_probe(x, y, [4])
    with pytest.raises(ValueError, match="labels that vary"):
        fit_generative_probe(x, np.ones(20), [3])
    with pytest.raises(ValueError, match="needs >= 6 labelled rows"):  # three covariates: 3 + 3 coefficients
        fit_generative_probe(x[:5], y[:5], [1, 2, 3])
    with pytest.raises(ValueError, match="method must be 'ridge' or 'generative'"):
        SpectraFMProcessor(label_names=["TEFF"], linear_probes={"NEW": {
            **fit_ridge_loo(x, y), "inputs": [], "method": "cannon"}})


def spectra_and_truth(pipe, rng, n=40):
    spectra = [fake_apogee_spectrum(rng, n=400) for _ in range(n)]
    base = pipe.predict(spectra, labels=["TEFF", "LOGG"])
    emb = pipe.embed(spectra)
    # a new label the network was never trained on: a line in its features
    truth = 0.002 * (base["TEFF"].to_numpy() - 4800) + 0.5 * emb[:, 0] / emb[:, 0].std() - 0.4
    return spectra, base, truth


def test_a_probe_adds_a_label_and_keeps_the_network_and_the_old_pipeline(rng, tmp_path):
    pipe = SpectraFMPipeline.from_pretrained(TINY, device="cpu")
    spectra, base, truth = spectra_and_truth(pipe, rng)
    pipe.processor.label_affine["NEW"] = [2.0, 0.0]  # a stale correction of the same name does not apply to it
    probed = pipe.fit_linear_probe(spectra[:30], {"NEW": truth[:30]}, ["NEW"])
    assert "NEW" not in pipe.label_names and pipe.processor.linear_probes == {}  # the old pipeline unchanged
    assert probed.label_names == pipe.label_names + ["NEW"]
    assert probed.model is pipe.model
    table = probed.predict(spectra)
    np.testing.assert_allclose(table["TEFF"], base["TEFF"])  # the network's own labels untouched
    np.testing.assert_allclose(table["NEW"][30:], truth[30:], atol=0.05)  # held-out spectra: the line holds
    assert (table["NEW_err"] == probed.processor.linear_probes["NEW"]["sigma"]).all()
    assert (table["NEW_scatter"] == 0).all()
    probed.save_pretrained(tmp_path / "probed")
    stored = json.loads((tmp_path / "probed" / "preprocessor_config.json").read_text())["linear_probes"]
    assert stored["NEW"]["inputs"] == pipe.label_names
    assert len(stored["NEW"]["weights"]) == pipe.model.config.hidden_size + len(pipe.label_names)
    again = SpectraFMPipeline.from_pretrained(tmp_path / "probed", device="cpu")
    np.testing.assert_allclose(again.predict(spectra, labels="NEW")["NEW"], table["NEW"], rtol=1e-6)
    # features are read in predict's chunks: a probe fitted chunk by chunk is the same probe (to float32 rounding:
    # on some CPUs a batch of 7 sums in another order than one of 30, and the ridge solve carries that through)
    pipe.chunk_size = 7
    chunked = pipe.fit_linear_probe(spectra[:30], {"NEW": truth[:30]}, ["NEW"])
    weights = np.asarray(probed.processor.linear_probes["NEW"]["weights"])
    np.testing.assert_allclose(chunked.processor.linear_probes["NEW"]["weights"], weights,
                               atol=1e-4 * np.abs(weights).max())
    np.testing.assert_allclose(chunked.predict(spectra, labels="NEW")["NEW"], table["NEW"], atol=1e-4)
    # the model card names the probed label and what the probe reads (folder and pipeline alike)
    from spectrafm_hf.cards import render_model_card

    for source in (tmp_path / "probed", probed):
        card = render_model_card(source).text
        assert "`NEW`: linear probe" in card and "fitted on 30 spectra" in card
    # fine-tuning makes new features: the probe does not survive it
    assert probed.fit(spectra[:8], {"TEFF": base["TEFF"][:8]}, steps=1, rehearsal=None).processor.linear_probes == {}
    with pytest.raises(KeyError, match="read by a linear probe"):
        probed.attention(spectra[0], "NEW")


def test_a_probe_of_a_network_label_replaces_its_answer_and_reads_the_network_not_itself(rng):
    pipe = SpectraFMPipeline.from_pretrained(TINY, device="cpu")
    spectra, base, truth = spectra_and_truth(pipe, rng)
    probed = pipe.fit_linear_probe(spectra, {"LOGG": truth}, ["LOGG"], inputs=["TEFF", "LOGG"])
    assert probed.label_names == pipe.label_names  # no new name
    out = probed.predict(spectra, labels=["LOGG", "TEFF"])
    np.testing.assert_allclose(out["LOGG"], truth, atol=0.05)
    np.testing.assert_allclose(out["TEFF"], base["TEFF"])
    # refitting on the probed pipeline reads the network's LOGG, not the previous probe's: the same probe again
    again = probed.fit_linear_probe(spectra, {"LOGG": truth}, ["LOGG"], inputs=["TEFF", "LOGG"])
    assert again.processor.linear_probes["LOGG"]["weights"] == pytest.approx(
        probed.processor.linear_probes["LOGG"]["weights"])
    with pytest.raises(KeyError, match="does not predict"):
        pipe.fit_linear_probe(spectra, {"LOGG": truth}, ["LOGG"], inputs=["NOPE"])
    with pytest.raises(ValueError, match="inputs must be 'auto'"):
        pipe.fit_linear_probe(spectra, {"LOGG": truth}, ["LOGG"], inputs="all")


def test_a_probe_can_also_read_the_decoder_states_of_its_input_queries(rng, tmp_path):
    """features="embedding+queries": the embedding, then the last decoder state of each input label's query (taken
    here by a hook on the model's last decoder block, independent of the pipeline), then the answers. The stored
    probe is the generative fit of exactly those features; it predicts, saves and reloads like any probe."""
    pipe = SpectraFMPipeline.from_pretrained(TINY, device="cpu")
    spectra = [fake_apogee_spectrum(rng, n=60) for _ in range(40)]  # within the context: one subset per spectrum
    base = pipe.predict(spectra, labels=["TEFF", "LOGG"])
    states = []
    hook = pipe.model.decoder[-1].register_forward_hook(lambda mod, inp, out: states.append(out[0].detach()))
    pipe.predict(spectra, labels=["TEFF", "LOGG"])
    hook.remove()
    states = np.concatenate([s.numpy() for s in states])  # (40, 2 queries, hidden_size)
    truth = 0.8 * states[:, 1, 0] / states[:, 1, 0].std() + 0.001 * (base["TEFF"].to_numpy() - 4800)
    probed = pipe.fit_linear_probe(spectra[:30], {"NEW": truth[:30]}, ["NEW"], inputs=["TEFF", "LOGG"],
                                   method="generative", features="embedding+queries")
    probe = probed.processor.linear_probes["NEW"]
    hidden = pipe.model.config.hidden_size
    assert probe["features"] == "embedding+queries" and len(probe["weights"]) == 3 * hidden + 2
    x = np.column_stack([pipe.embed(spectra), states[:, 0], states[:, 1], base["TEFF"], base["LOGG"]])
    # the direct fit reads the 30 fitted spectra as one batch, as the probe did: the weights of this small, nearly
    # collinear fit move by more than float noise when the same spectra are batched with others (seen on one CPU)
    fitted = []
    hook = pipe.model.decoder[-1].register_forward_hook(lambda mod, inp, out: fitted.append(out[0].detach()))
    base30 = pipe.predict(spectra[:30], labels=["TEFF", "LOGG"])
    hook.remove()
    fitted = np.concatenate([s.numpy() for s in fitted])
    x30 = np.column_stack([pipe.embed(spectra[:30]), fitted[:, 0], fitted[:, 1], base30["TEFF"], base30["LOGG"]])
    direct = fit_generative_probe(x30, truth[:30], [3 * hidden, 3 * hidden + 1], 0.2)
    np.testing.assert_allclose(probe["weights"], direct["weights"], rtol=1e-4, atol=1e-6)
    table = probed.predict(spectra, labels="NEW")
    np.testing.assert_allclose(table["NEW"], apply_probe(direct, x), atol=1e-4)
    plain = pipe.fit_linear_probe(spectra[:30], {"NEW": truth[:30]}, ["NEW"], inputs=["TEFF", "LOGG"],
                                  method="generative")
    assert plain.processor.linear_probes["NEW"]["features"] == "embedding"
    assert len(plain.processor.linear_probes["NEW"]["weights"]) == hidden + 2
    probed.save_pretrained(tmp_path / "probed")
    again = SpectraFMPipeline.from_pretrained(tmp_path / "probed", device="cpu")
    np.testing.assert_allclose(again.predict(spectra, labels="NEW")["NEW"], table["NEW"], rtol=1e-6)
    from spectrafm_hf.cards import render_model_card

    assert "the `LOGG` query's decoder state" in render_model_card(tmp_path / "probed").text
    with pytest.raises(ValueError, match="features must be one of"):
        pipe.fit_linear_probe(spectra[:30], {"NEW": truth[:30]}, ["NEW"], features="queries")
    with pytest.raises(ValueError, match=r"features must be 'embedding' or 'embedding\+queries'"):
        SpectraFMProcessor(label_names=["TEFF"], linear_probes={"NEW": {**probe, "features": "queries"}})
    with pytest.raises(ValueError, match="query states"):  # a probe of another width does not load on this model
        from spectrafm_hf.processing_spectrafm import check_probe

        check_probe("NEW", {**probe, "features": "embedding+queries", "weights": probe["weights"][:-1],
                            "feature_mean": probe["feature_mean"][:-1], "feature_scale": probe["feature_scale"][:-1]},
                    hidden)


def test_probe_uncertainties_recalibrate_on_validation_spectra(rng):
    pipe = SpectraFMPipeline.from_pretrained(TINY, device="cpu")
    spectra, _, truth = spectra_and_truth(pipe, rng, n=60)
    noisy = truth + rng.normal(0, 0.3, truth.size)
    probed = pipe.fit_linear_probe(spectra[:30], {"NEW": noisy[:30]}, ["NEW"])
    scale = probed.calibrate_uncertainties(spectra[30:], {"NEW": noisy[30:]}, ["NEW"])["NEW"]
    table = probed.predict(spectra[30:], labels="NEW")
    inside = np.abs(table["NEW"] - noisy[30:]) <= table["NEW_err"]
    assert 0.6 <= inside.mean() <= 0.75 and scale > 0


def test_the_predict_command_reads_a_probed_label_from_spectrum_files(rng, tmp_path, capsys):
    """Survey-scale prediction (`spectrafm predict`, `spectrafm_hf.survey`) returns a probed label like any other;
    `spectrafm info` names the probe."""
    from conftest import TESTS
    from spectrafm_hf.cli import main
    from spectrafm_hf.instruments import read

    fixtures = TESTS / "fixtures" / "apogee"
    pipe = SpectraFMPipeline.from_pretrained(TINY, device="cpu")
    spectra, _, truth = spectra_and_truth(pipe, rng)
    pipe.fit_linear_probe(spectra, {"NEW": truth}, ["NEW"]).save_pretrained(tmp_path / "probed")
    out = tmp_path / "labels.csv"
    assert main(["predict", str(fixtures), "--model", str(tmp_path / "probed"), "--labels", "TEFF", "NEW",
                 "-o", str(out), "--quiet"]) == 0
    table = pd.read_csv(out)
    assert {"TEFF", "NEW", "NEW_err"} <= set(table.columns) and table["NEW"].notna().all()
    assert main(["info", str(tmp_path / "probed")]) == 0
    assert "NEW      ridge linear probe on the embedding + TEFF, LOGG" in capsys.readouterr().out
    first = sorted(fixtures.iterdir())[0]
    alone = SpectraFMPipeline.from_pretrained(tmp_path / "probed", device="cpu").predict(read(first), "NEW")
    mine = table[table["source"] == str(first)]["NEW"].to_numpy()
    np.testing.assert_allclose(mine, alone["NEW"].to_numpy(), rtol=1e-5)


def test_a_generative_probe_is_fitted_saved_and_applied_like_a_ridge_probe(rng, tmp_path):
    """`fit_linear_probe(method="generative")`: the network's Teff and logg are its covariates, the stored line is
    applied by predict, survives save and load, and the model card and `spectrafm info` say which probe it is."""
    from spectrafm_hf.cards import render_model_card
    from spectrafm_hf.cli import main

    pipe = SpectraFMPipeline.from_pretrained(TINY, device="cpu")
    spectra, _, truth = spectra_and_truth(pipe, rng)
    probed = pipe.fit_linear_probe(spectra[:30], {"NEW": truth[:30]}, ["NEW"], method="generative", shrink=0.5)
    probe = probed.processor.linear_probes["NEW"]
    assert probe["method"] == "generative" and probe["alpha"] == 0.5 and probe["inputs"] == pipe.label_names
    hidden = pipe.model.config.hidden_size
    def features(s):  # in one batch per call, as the probe read them (another batch size rounds differently)
        return np.column_stack([pipe.embed(s), pipe.predict(s, labels=pipe.label_names)[pipe.label_names]])

    x = features(spectra)
    teff_logg = [hidden + pipe.label_names.index("TEFF"), hidden + pipe.label_names.index("LOGG")]
    direct = fit_generative_probe(features(spectra[:30]), truth[:30], teff_logg, shrink=0.5)
    assert probe["weights"] == pytest.approx(direct["weights"], rel=1e-6, abs=1e-9)
    table = probed.predict(spectra, labels="NEW")
    np.testing.assert_allclose(table["NEW"], apply_probe(direct, x), rtol=1e-6, atol=1e-9)
    ridge = pipe.fit_linear_probe(spectra[:30], {"NEW": truth[:30]}, ["NEW"]).processor.linear_probes["NEW"]
    assert ridge["method"] == "ridge" and ridge["weights"] != pytest.approx(probe["weights"])
    probed.save_pretrained(tmp_path / "probed")
    again = SpectraFMPipeline.from_pretrained(tmp_path / "probed", device="cpu")
    assert again.processor.linear_probes["NEW"]["method"] == "generative"
    np.testing.assert_allclose(again.predict(spectra, labels="NEW")["NEW"], table["NEW"], rtol=1e-6)
    assert "generative (GLS) read-out of the mean encoder output" in render_model_card(tmp_path / "probed").text
    assert main(["info", str(tmp_path / "probed")]) == 0
    with pytest.raises(ValueError, match="method must be 'ridge' or 'generative'"):
        pipe.fit_linear_probe(spectra[:30], {"NEW": truth[:30]}, ["NEW"], method="cannon")
