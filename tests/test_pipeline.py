"""SpectraFMPipeline and SpectraFMProcessor on the tiny committed checkpoint."""

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import TINY, fake_apogee_spectrum

from spectrafm_hf import SpectraFMPipeline, SpectraFMProcessor, Spectrum, SpectrumError


def test_predict_table_schema_and_units(tiny_pipeline, rng):
    spectra = [fake_apogee_spectrum(rng, object_id=f"star{i}") for i in range(2)]
    table = tiny_pipeline.predict(spectra)
    assert isinstance(table, pd.DataFrame) and len(table) == 2
    for name in tiny_pipeline.label_names:
        assert {name, f"{name}_err", f"{name}_scatter"} <= set(table.columns)
        assert np.isfinite(table[name]).all() and (table[f"{name}_err"] > 0).all()
    # physical units: Teff is in Kelvin around the processor centre, not a normalised number
    assert table["TEFF"].between(1000, 10000).all()
    assert table["object_id"].tolist() == ["star0", "star1"]
    assert (table["n_pixels"] == 7514).all()
    assert (table["n_subsets"] == int(np.ceil(7514 / 64))).all()


def test_long_spectrum_is_the_inverse_variance_mean_of_its_subsets(tiny_pipeline, rng):
    spec = fake_apogee_spectrum(rng, n=300)
    table = tiny_pipeline.predict(spec, labels=["FE_H"], seed=5)
    proc = tiny_pipeline.processor
    wl, x, good = proc.normalize(spec)
    subsets = proc.pixel_subsets(good.sum(), seed=5)
    assert len(subsets) == 5 and sorted(np.concatenate(subsets).tolist()) == list(range(300))
    means, sigmas = [], []
    for part in subsets:
        with torch.no_grad():
            out = tiny_pipeline.model(flux=torch.tensor(x[part])[None], wavelength=torch.tensor(wl[part])[None].float(),
                                      query_ids=torch.tensor([[4]]))
        m, s = proc.unscale_labels(out.mean, out.log_variance, ["FE_H"])
        means.append(m.item())
        sigmas.append(s.item())
    w = 1 / np.square(sigmas)
    assert table["FE_H"].item() == pytest.approx(np.sum(w * means) / w.sum(), rel=1e-5)
    assert table["FE_H_err"].item() == pytest.approx(np.sqrt(len(w) / w.sum()), rel=1e-5)
    assert table["FE_H_scatter"].item() > 0


def test_different_grids_and_lengths_share_one_call(tiny_pipeline, rng):
    a = fake_apogee_spectrum(rng, n=40)
    b = Spectrum(wavelength=np.linspace(8470, 8740, 500), flux=1 - 0.2 * rng.random(500), instrument="rvs")
    table = tiny_pipeline.predict([a, b])
    alone = tiny_pipeline.predict(b)
    assert table["n_pixels"].tolist() == [40, 500]
    np.testing.assert_allclose(table.iloc[1]["TEFF"], alone.iloc[0]["TEFF"], rtol=1e-5)
    # the tiny model was "trained" on 15100-17000 A: the optical spectrum is flagged as outside its coverage
    assert table["coverage_fraction"].tolist() == [1.0, 0.0]


def test_predict_is_reproducible_and_seed_dependent(tiny_pipeline, rng):
    spec = fake_apogee_spectrum(rng, n=500)
    a, b = tiny_pipeline.predict(spec, seed=1), tiny_pipeline.predict(spec, seed=1)
    c = tiny_pipeline.predict(spec, seed=2)
    pd.testing.assert_frame_equal(a, b)
    assert a["TEFF"].item() != c["TEFF"].item()


def test_known_labels_are_read_as_inputs(tiny_pipeline, rng):
    spec = fake_apogee_spectrum(rng, n=60)
    plain = tiny_pipeline.predict(spec)
    giant = tiny_pipeline.predict(spec, known={"LOGG": [1.0]})
    dwarf = tiny_pipeline.predict(spec, known={"LOGG": [4.5]})
    assert giant["FE_H"].item() != dwarf["FE_H"].item() != plain["FE_H"].item()
    with pytest.raises(KeyError, match="cannot be an input"):
        tiny_pipeline.predict(spec, known={"VSINI": [3.0]})


def test_embed_and_attention(tiny_pipeline, rng):
    spectra = [fake_apogee_spectrum(rng, n=n) for n in (100, 200)]
    emb = tiny_pipeline.embed(spectra)
    assert emb.shape == (2, 8) and np.isfinite(emb).all()
    att = tiny_pipeline.attention(spectra[1], "FE_H")
    assert len(att) == 200 and set(att.columns) == {"wavelength", "flux", "attention", "line"}
    n_subsets = int(np.ceil(200 / 64))
    assert att["attention"].sum() == pytest.approx(n_subsets)  # each subset renormalised to 1
    assert (att["attention"] >= 0).all()


def test_five_step_finetune_then_predict(tiny_pipeline, rng):
    spectra = [fake_apogee_spectrum(rng, n=150) for _ in range(8)]
    labels = np.column_stack([rng.uniform(4000, 5500, 8), rng.uniform(1, 4.5, 8), rng.normal(0, 0.1, 8),
                              rng.normal(0, 0.1, 8), rng.uniform(-1, 0.3, 8)])
    labels[0, 2] = np.nan
    losses = []
    tuned = tiny_pipeline.fit(spectra, labels, steps=5, batch_size=4, learning_rate=1e-3,
                              callback=lambda step, loss: losses.append(loss))
    assert len(losses) == 5 and np.isfinite(losses).all()
    before = tiny_pipeline.predict(spectra)
    after = tuned.predict(spectra)
    assert np.isfinite(after.drop(columns=["coverage_fraction"]).select_dtypes("number").to_numpy(float)).all()
    assert not np.allclose(before["TEFF"], after["TEFF"])  # the copy moved...
    pd.testing.assert_frame_equal(before, tiny_pipeline.predict(spectra))  # ...the original did not


def test_finetune_with_the_paper_freezing_only_moves_the_unfrozen_part(tiny_pipeline, rng):
    spectra = [fake_apogee_spectrum(rng, n=100) for _ in range(4)]
    labels = rng.uniform(-1, 0.3, (4, 1))
    tuned = tiny_pipeline.fit(spectra, labels, label_names=["FE_H"], steps=3, learning_rate=1e-2,
                              freeze=["decoder", "encoder_block_2"])
    old, new = tiny_pipeline.model, tuned.model
    assert torch.equal(old.decoder[0].dense_1.weight, new.decoder[0].dense_1.weight)
    assert torch.equal(old.encoder[1].dense_1.weight, new.encoder[1].dense_1.weight)
    assert not torch.equal(old.encoder[0].dense_1.weight, new.encoder[0].dense_1.weight)
    with pytest.raises(ValueError, match="unknown freeze"):
        tiny_pipeline.fit(spectra, labels, label_names=["FE_H"], steps=1, freeze=["everything"])


def test_save_and_reload_pipeline(tiny_pipeline, tmp_path, rng):
    spec = fake_apogee_spectrum(rng, n=80)
    tiny_pipeline.save_pretrained(tmp_path / "p")
    again = SpectraFMPipeline.from_pretrained(tmp_path / "p", device="cpu")
    pd.testing.assert_frame_equal(tiny_pipeline.predict(spec), again.predict(spec))
    assert not any(p.name.startswith(".") for p in tmp_path.iterdir())  # no temporary folder left behind


@pytest.mark.parametrize(
    "make, error, match",
    [
        (lambda: Spectrum(wavelength=[], flux=[]), SpectrumError, "empty"),
        (lambda: Spectrum(wavelength=np.linspace(15200, 15300, 5), flux=np.ones(4)), SpectrumError, "4"),
        (lambda: Spectrum(wavelength=np.linspace(1.52, 1.69, 50), flux=np.ones(50)), SpectrumError, "microns"),
        (lambda: Spectrum(wavelength=np.linspace(1520, 1690, 50), flux=np.ones(50)), SpectrumError, "nanometres"),
        (lambda: Spectrum(wavelength=[15200, 15201, 15201], flux=np.ones(3)), SpectrumError, "duplicated"),
        (lambda: Spectrum(wavelength=[15200, 15201], flux=[1, 1], ivar=[1, -1]), SpectrumError, "negative"),
        (lambda: Spectrum(wavelength=[15200, 15201], flux=[1, 1], ivar=[1, np.inf]), SpectrumError, "infinite"),
    ],
)
def test_bad_spectra_are_refused_with_a_clear_message(make, error, match):
    with pytest.raises(error, match=match):
        make()


def test_all_nan_spectrum_is_refused_by_predict(tiny_pipeline):
    spec = Spectrum(wavelength=np.linspace(15200, 15300, 20), flux=np.full(20, np.nan), meta={"source": "x.fits"})
    with pytest.raises(SpectrumError, match="x.fits: no usable pixel"):
        tiny_pipeline.predict(spec)


def test_descending_wavelengths_are_sorted_with_their_pixels():
    s = Spectrum(wavelength=[15202.0, 15201.0, 15200.0], flux=[3.0, 2.0, 1.0], ivar=[30.0, 20.0, 10.0],
                 mask=[True, False, True])
    assert s.wavelength.tolist() == [15200.0, 15201.0, 15202.0]
    assert s.flux.tolist() == [1.0, 2.0, 3.0] and s.ivar.tolist() == [10.0, 20.0, 30.0]
    assert s.good.tolist() == [True, False, True]


def test_quantities_and_flux_err_are_converted():
    import astropy.units as u

    s = Spectrum(wavelength=np.array([1.52, 1.53]) * u.micron, flux=[1.0, 0.9], flux_err=[0.1, 0.0])
    np.testing.assert_allclose(s.wavelength, [15200.0, 15300.0])
    assert s.ivar.tolist() == [pytest.approx(100.0), 0.0] and s.good.tolist() == [True, False]


def test_air_vacuum_round_trip():
    from spectrafm_hf import air_to_vacuum, vacuum_to_air

    air = np.array([5000.0, 6562.8, 8542.09, 15765.8])
    vac = air_to_vacuum(air)
    assert vac[1] == pytest.approx(6564.61, abs=0.02)  # H-alpha
    np.testing.assert_allclose(vacuum_to_air(vac), air, atol=2e-3)


def test_specutils_round_trip():
    pytest.importorskip("specutils")
    s = Spectrum(wavelength=np.linspace(15200, 15300, 10), flux=np.linspace(0.9, 1.0, 10), ivar=np.full(10, 4.0),
                 mask=np.arange(10) != 3)
    back = Spectrum.from_specutils(s.to_specutils())
    np.testing.assert_allclose(back.wavelength, s.wavelength)
    np.testing.assert_allclose(back.flux, s.flux)
    np.testing.assert_allclose(back.ivar, s.ivar)
    assert back.good.tolist() == s.good.tolist()


def test_processor_round_trips_labels_and_saves(tmp_path):
    proc = SpectraFMProcessor(label_names=["TEFF", "FE_H"], label_centers=[5000, -0.2], label_scales=[500, 0.3])
    z, zerr = proc.scale_labels([[5500, 0.1]], errors=[[50, 0.03]])
    np.testing.assert_allclose(z, [[1.0, 1.0]])
    np.testing.assert_allclose(zerr, [[0.1, 0.1]])
    value, sigma = proc.unscale_labels(np.array([[1.0, 1.0]]), np.log(np.array([[0.01, 0.04]])))
    np.testing.assert_allclose(value, [[5500, 0.1]])
    np.testing.assert_allclose(sigma, [[50, 0.06]])
    proc.save_pretrained(tmp_path)
    again = SpectraFMProcessor.from_pretrained(tmp_path)
    assert again.to_dict() == proc.to_dict()
    with pytest.raises(ValueError, match="label_scales"):
        SpectraFMProcessor(label_names=["A"], label_scales=[0.0])


def test_interleaved_subsets_read_every_kth_pixel_at_each_phase(tiny_pipeline, tmp_path):
    from spectrafm_hf.training.collator import SpectraCollator

    proc = SpectraFMProcessor(context_length=100, pixel_subset_rule="interleaved")
    # 343 pixels (the Gaia XP grid) need 4 subsets of <= 100: the phases of every 4th pixel
    phases = proc.pixel_subsets(343)
    assert [p[:2].tolist() for p in phases] == [[0, 4], [1, 5], [2, 6], [3, 7]]
    assert sorted(np.concatenate(phases).tolist()) == list(range(343))
    # a training draw is one phase, never a scatter; every phase comes up
    idx = np.flatnonzero(np.arange(343) != 10)  # one masked pixel: phases of the USABLE pixels
    rng = np.random.default_rng(0)
    draws = [proc.choose_subset(idx, rng) for _ in range(40)]
    first = [int(np.searchsorted(idx, d[0])) for d in draws]
    assert all(np.array_equal(d, idx[phase::4]) for d, phase in zip(draws, first))
    assert set(first) == {0, 1, 2, 3}
    # the collator reads with the processor's rule
    wl = np.linspace(3300, 10500, 343)
    feature = {"wavelength": wl, "flux": np.ones(343), "object_id": "a"}
    got, _ = SpectraCollator(proc, [], []).pixels(feature, np.random.default_rng(1))
    step = np.diff(np.searchsorted(wl, got))
    assert len(got) in (85, 86) and set(step.tolist()) == {4}
    # and the pipeline predicts from the phases, which the saved processor keeps
    proc.save_pretrained(tmp_path)
    assert SpectraFMProcessor.from_pretrained(tmp_path).pixel_subset_rule == "interleaved"
    tiny_pipeline.processor.pixel_subset_rule = "interleaved"
    try:
        spec = Spectrum(wavelength=np.linspace(15200, 16900, 1500), flux=np.full(1500, 0.95))
        _, _, good = tiny_pipeline.processor.normalize(spec)
        k = -(-int(good.sum()) // tiny_pipeline.processor.context_length)
        a, b = tiny_pipeline.predict(spec, seed=1), tiny_pipeline.predict(spec, seed=2)
        assert k > 1 and a.equals(b)  # no random draw left at inference
    finally:
        tiny_pipeline.processor.pixel_subset_rule = "random"
    with pytest.raises(ValueError, match="pixel_subset_rule"):
        SpectraFMProcessor(pixel_subset_rule="strided")


def test_processor_clips_at_ten_sigma():
    proc = SpectraFMProcessor(flux_center=1.0, flux_scale=0.01)
    s = Spectrum(wavelength=np.linspace(15200, 15300, 4), flux=[1.0, 1.05, 1.2, 0.85])
    _, x, good = proc.normalize(s)
    assert good.tolist() == [True, True, False, False]
    assert np.isnan(x[2]) and x[1] == pytest.approx(5.0)


def test_tiny_checkpoint_is_small():
    assert (TINY / "model.safetensors").stat().st_size < 40_000


def test_predict_in_chunks_gives_the_same_table(tiny_pipeline, rng):
    spectra = [fake_apogee_spectrum(rng, n=n) for n in (50, 120, 70, 90, 30)]
    whole = tiny_pipeline.predict(spectra, known={"LOGG": [1.0, 2.0, 3.0, 4.0, 5.0]})
    tiny_pipeline.chunk_size = 2
    chunked = tiny_pipeline.predict(spectra, known={"LOGG": [1.0, 2.0, 3.0, 4.0, 5.0]})
    pd.testing.assert_frame_equal(whole, chunked, check_exact=False, rtol=1e-4, atol=1e-6)


def test_predictions_as_an_astropy_qtable_with_units(tiny_pipeline, rng):
    import astropy.units as u

    from spectrafm_hf.pipeline import to_astropy

    table = to_astropy(tiny_pipeline.predict(fake_apogee_spectrum(rng, n=40, object_id="s1")))
    assert table["TEFF"].unit == u.K and table["TEFF_err"].unit == u.K
    assert table["FE_H"].unit == u.dex(u.one) and table["object_id"][0] == "s1"
    assert table["TEFF"].to(u.K).value[0] == pytest.approx(table["TEFF"].value[0])


def test_predict_stream_takes_a_generator_and_yields_chunks(tiny_pipeline, rng):
    spectra = [fake_apogee_spectrum(rng, n=60, object_id=f"s{i}") for i in range(5)]
    tiny_pipeline.chunk_size = 2
    tables = list(tiny_pipeline.predict_stream(s for s in spectra))
    assert [len(t) for t in tables] == [2, 2, 1]
    streamed = pd.concat(tables, ignore_index=True)
    pd.testing.assert_frame_equal(streamed, tiny_pipeline.predict(spectra), check_exact=False, rtol=1e-4, atol=1e-6)


def test_results_do_not_depend_on_the_batch_size_and_the_cpu_default_is_cache_sized(tiny_pipeline, rng):
    from spectrafm_hf import SpectraFMConfig
    from spectrafm_hf.pipeline import default_batch_size

    spectra = [fake_apogee_spectrum(rng, n=n) for n in (500, 130, 64)]
    default = tiny_pipeline.predict(spectra)
    tiny_pipeline.batch_size = 1
    # float32 sums in another order per batch size (oneDNN picks kernels by shape): ~3e-5 relative on some CPUs
    pd.testing.assert_frame_equal(default, tiny_pipeline.predict(spectra), check_exact=False, rtol=1e-4, atol=1e-6)
    # about 4096 pixels per forward pass on a CPU: 8 subsets for the paper's 512-pixel context, 16 for 256
    assert default_batch_size(SpectraFMConfig(), "cpu") == 8
    assert default_batch_size(SpectraFMConfig(context_length=256), "cpu") == 16
    assert default_batch_size(SpectraFMConfig(), "cuda") == 512
    assert SpectraFMPipeline(tiny_pipeline.model, tiny_pipeline.processor, device="cpu", batch_size=3).batch_size == 3


def test_bf16_autocast_moves_predictions_far_less_than_their_uncertainty(tiny_pipeline, rng):
    spectra = [fake_apogee_spectrum(rng, n=n) for n in (300, 120)]
    fp32 = tiny_pipeline.predict(spectra)
    bf16 = SpectraFMPipeline(tiny_pipeline.model, tiny_pipeline.processor, device="cpu", bf16=True).predict(spectra)
    for name in tiny_pipeline.label_names:
        change = (bf16[name] - fp32[name]).abs()
        assert (change > 0).any(), name  # it did run in bf16
        assert (change < 0.05 * fp32[f"{name}_err"]).all(), name


def test_compiled_forward_gives_the_same_predictions_and_saves_the_plain_module(tiny_pipeline, rng, tmp_path):
    spectra = [fake_apogee_spectrum(rng, n=n) for n in (300, 120)]
    compiled = SpectraFMPipeline(tiny_pipeline.model, tiny_pipeline.processor, device="cpu", compile=True)
    assert compiled._forward is not compiled.model
    pd.testing.assert_frame_equal(tiny_pipeline.predict(spectra), compiled.predict(spectra), check_exact=False,
                                  rtol=1e-5, atol=1e-6)
    compiled.save_pretrained(tmp_path / "saved")  # parameter names as in the plain model
    assert SpectraFMPipeline.from_pretrained(tmp_path / "saved").predict(spectra[0])["FE_H"].item() == pytest.approx(
        tiny_pipeline.predict(spectra[0])["FE_H"].item(), rel=1e-6)


def test_predict_reads_a_dataset_in_the_package_schema(tiny_pipeline, rng):
    """A `datasets.Dataset` (a row selection included) is predicted as its rows are, read with `row_to_spectrum`;
    a dataset without the schema's columns, or a list of rows, is refused with what to do."""
    import datasets

    from spectrafm_hf.data import row_to_spectrum, spectra_to_table

    spectra = [fake_apogee_spectrum(rng, object_id=f"star{i}") for i in range(5)]
    ds = datasets.Dataset(spectra_to_table(spectra)).select([4, 1, 3])
    table = tiny_pipeline.predict(ds, labels=["TEFF", "FE_H"])
    direct = tiny_pipeline.predict([row_to_spectrum(r) for r in ds.with_format("numpy")], labels=["TEFF", "FE_H"])
    assert table["object_id"].tolist() == ["star4", "star1", "star3"]
    pd.testing.assert_frame_equal(table, direct)
    with pytest.raises(ValueError, match="missing column.*flux"):
        tiny_pipeline.predict(ds.remove_columns("flux"))
    with pytest.raises(TypeError, match="row_to_spectrum"):
        tiny_pipeline.predict(list(ds))
