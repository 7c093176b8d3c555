"""The stage-1 recipe's library features: pixel subsets mixing scattered pixels with contiguous windows (collator and
torch sampler), realism augmentation (numpy and torch), and the device-side synthetic stream."""

import numpy as np
import pytest
import torch
from conftest import TINY, fake_dataset_dict

from spectrafm_hf import SpectraFMProcessor, synth
from spectrafm_hf.synth import realism
from spectrafm_hf.synth.augment import RealismAugment
from spectrafm_hf.training.collator import SpectraCollator
from spectrafm_hf.training.pixel_subsets import choose_pixels, sample_pixel_subsets
from spectrafm_hf.training.synthetic_stream import (ArrayStream, SyntheticStream, cosine_progress_lr,
                                                    pseudo_continuum_operator)

LABELS = ["TEFF", "LOGG", "O_FE", "MG_FE", "FE_H"]


@pytest.fixture(scope="module")
def dsd():
    return fake_dataset_dict()


# ------------------------------------------------------------------------------------------------ pixel subsets
def test_choose_pixels_without_windows_is_the_historic_draw():
    idx = np.flatnonzero(np.random.default_rng(1).random(500) > 0.2)
    a = choose_pixels(idx, 500, 64, np.random.default_rng(5))
    b = np.sort(np.random.default_rng(5).choice(idx, 64, replace=False))
    assert np.array_equal(a, b)


def test_choose_pixels_windows_are_contiguous_with_varied_widths():
    idx = np.arange(2000)
    rng = np.random.default_rng(0)
    spans, sizes = [], []
    for _ in range(300):
        sel = choose_pixels(idx, 2000, 64, rng, window_prob=1.0, window_width=(16, 2000))
        spans.append(sel.max() - sel.min() + 1)
        sizes.append(sel.size)
    spans, sizes = np.array(spans), np.array(sizes)
    assert (sizes <= 64).all() and (spans <= 2000).all()
    small = sizes < 64  # a window narrower than the context: every pixel of it, one contiguous run
    assert small.any() and (spans[small] == sizes[small]).all()
    assert (spans >= 16).all() and np.median(spans) < 1000 and spans.max() > 1000  # log-uniform widths
    # a window of masked pixels only falls back to the whole spectrum
    sel = choose_pixels(np.arange(1000, 1100), 2000, 64, np.random.default_rng(0), 1.0, (5, 5))
    assert sel.size == 64


def test_sample_pixel_subsets_torch_rule():
    g = torch.Generator().manual_seed(0)
    good = torch.rand(64, 3000, generator=g) > 0.1
    good[0] = False
    good[0, :10] = True  # a row with fewer usable pixels than the context
    idx, valid = sample_pixel_subsets(good, 128, generator=g)
    assert idx.shape == (64, 128)
    assert valid[0].sum() == 10 and set(idx[0][valid[0]].tolist()) == set(range(10))
    assert torch.gather(good, 1, idx)[valid].all() and valid[1:].all()
    assert all(len(set(r.tolist())) == 128 for r in idx[1:])  # distinct pixels
    idx, valid = sample_pixel_subsets(good, 128, window_prob=1.0, window_width=(50, 50), generator=g)
    for r, v in zip(idx[1:], valid[1:]):
        kept = r[v]
        assert kept.max() - kept.min() < 50 and 30 < kept.numel() <= 50  # one 50-pixel window, ~90 % usable
    idx, valid = sample_pixel_subsets(good, 128, window_prob=0.5, window_width=(50, 50), generator=g)
    wide = torch.stack([(r[v].max() - r[v].min()) for r, v in zip(idx[1:], valid[1:])]) >= 50
    assert 10 < int(wide.sum()) < 53  # about half the rows scattered over the whole spectrum
    with pytest.raises(ValueError, match="batch, pixels"):
        sample_pixel_subsets(good[0], 8)


def test_collator_window_option(dsd):
    proc = SpectraFMProcessor.from_pretrained(TINY)
    rows = [dsd["train"][i] for i in range(8)]
    torch.manual_seed(3)
    plain = SpectraCollator(proc, LABELS, list(range(5)))(rows)
    torch.manual_seed(3)
    off = SpectraCollator(proc, LABELS, list(range(5)), window_prob=0.0, window_width=[10, 20])(rows)
    assert torch.equal(plain["wavelength"], off["wavelength"])  # opt-in: nothing changes by default
    coll = SpectraCollator(proc, LABELS, list(range(5)), window_prob=1.0, window_width=[20, 20])
    batch = coll(rows)
    n = batch["observed_mask"].sum(1)
    assert (n <= 20).all() and (n > 10).all()
    wl = np.asarray(rows[0]["wavelength"])
    for w, m in zip(batch["wavelength"], batch["observed_mask"].bool()):
        i = np.searchsorted(wl, w[m].double().numpy() - 1e-3)
        assert i.max() - i.min() < 20  # one contiguous 20-pixel window of the row
    # inside a wavelength window the random windows stay inside it
    window = [float(wl[100]) - 0.01, float(wl[179]) + 0.01]
    batch = SpectraCollator(proc, LABELS, list(range(5)), wavelength_window=window, window_prob=1.0,
                            window_width=[10, 10])(rows)
    kept = batch["wavelength"][batch["observed_mask"].bool()]
    assert kept.min() >= window[0] and kept.max() <= window[1] and (batch["observed_mask"].sum(1) == 10).all()
    # evaluation collators ignore windows
    ev = SpectraCollator(proc, LABELS, list(range(5)), deterministic=True, window_prob=1.0, window_width=[5, 5])
    assert (ev(rows)["observed_mask"].sum(1) == 64).all()
    for bad in (dict(window_prob=1.5), dict(window_width=[0, 3]), dict(window_width=[5])):
        with pytest.raises(ValueError, match="window"):
            SpectraCollator(proc, LABELS, list(range(5)), **bad)
    with pytest.raises(TypeError, match="augment"):
        SpectraCollator(proc, LABELS, list(range(5)), augment="noise")


def test_collator_augment_hook(dsd):
    proc = SpectraFMProcessor.from_pretrained(TINY)
    rows = [dsd["train"][i] for i in range(4)]
    calls = []

    def mask_half(flux, good, rng):
        calls.append(flux.size)
        good = good.copy()
        good[: flux.size // 2] = False
        return flux, good

    batch = SpectraCollator(proc, LABELS, list(range(5)), augment=mask_half)(rows)
    n = len(rows[0]["flux"])
    assert calls == [n] * 4
    first_half = float(np.asarray(rows[0]["wavelength"])[n // 2 - 1])
    assert (batch["wavelength"][batch["observed_mask"].bool()] > first_half).all()
    calls.clear()
    SpectraCollator(proc, LABELS, list(range(5)), augment=mask_half, deterministic=True)(rows)
    assert calls == []  # never on evaluation rows


def test_run_training_takes_window_and_augment_options(dsd, tmp_path):
    from transformers import TrainingArguments

    from spectrafm_hf.training.run import ModelArguments, args_from_dict, run_training

    m, d, _ = args_from_dict({"output_dir": str(tmp_path), "window_prob": 0.5, "window_width": [32, 300],
                              "augment": {"snr_range": [50, 100], "prob": 0.5}})
    assert d.window_prob == 0.5 and d.window_width == [32, 300] and d.augment["snr_range"] == [50, 100]
    targs = TrainingArguments(output_dir=str(tmp_path / "run"), max_steps=2, per_device_train_batch_size=8,
                              report_to=[], use_cpu=True, save_strategy="no", eval_strategy="no",
                              disable_tqdm=True, dataloader_num_workers=0)
    tiny = dict(hidden_size=8, encoder_num_heads=[2, 2], encoder_ffn_dims=[16, 8], decoder_num_heads=[2, 2, 1],
                decoder_ffn_dims=[16, 8, 8], head_dims=[16, 8], context_length=64)
    trainer, _ = run_training(ModelArguments(config_overrides=tiny), d, targs, splits=(dsd["train"], None, None))
    coll = trainer.data_collator
    assert coll.window_prob == 0.5 and isinstance(coll.augment, RealismAugment)
    assert coll.augment.snr_range == (50.0, 100.0)
    with pytest.raises(ValueError, match="unknown keys"):
        RealismAugment.from_dict({"snr": 3})


# ------------------------------------------------------------------------------------------------ augmentation
def test_realism_augment_numpy_noise_masks_ripple():
    spec = synth.get_instrument("apogee")
    clean = synth.emulate(synth.sample_labels(1, seed=2))[0].astype(np.float64)
    good = np.ones(clean.size, bool)
    noise_only = RealismAugment(snr_range=(100, 100), continuum_ripple=0, telluric_eps_sigma=0, sky_alpha_sigma=0,
                                pixmask=False, bad_chunks_mean=0)
    f, g = noise_only(clean, good, np.random.default_rng(0))
    shape = realism.load_templates(spec).noise_shape
    expected = np.sqrt(np.mean((np.median(shape, 0) * np.sqrt(clean) / 100) ** 2))
    assert g.all() and 0.5 * expected < np.std(f - clean) < 2.0 * expected
    assert np.array_equal(clean, synth.emulate(synth.sample_labels(1, seed=2))[0])  # input untouched
    full = RealismAugment(bad_chunks_mean=3.0)
    f, g = full(clean, good, np.random.default_rng(1))
    assert 0.8 < g.mean() < 0.999 and not np.allclose(f, clean)
    off = RealismAugment(prob=0.0)
    f, g = off(clean, good, np.random.default_rng(1))
    assert np.array_equal(f, clean) and g.all()
    # another grid: flat noise shape, one chip, no templates
    f, g = RealismAugment(snr_range=(50, 50), pixmask=True, bad_chunks_mean=0)(np.ones(300), np.ones(300, bool),
                                                                                np.random.default_rng(0))
    assert g.all() and 0.01 < np.std(f - 1) < 0.04
    for bad in (dict(prob=2), dict(snr_range=(0, 5)), dict(continuum_ripple=-1), dict(bad_chunk_length=(0, 3))):
        with pytest.raises(ValueError):
            RealismAugment(**bad)


def test_realism_augment_torch_batch():
    aug = RealismAugment(snr_range=(100, 100), bad_chunks_mean=2.0)
    clean = torch.as_tensor(synth.emulate(synth.sample_labels(64, seed=3)))
    good = torch.ones_like(clean, dtype=torch.bool)
    g = torch.Generator().manual_seed(0)
    f, ok = aug.torch_batch(clean, good, g)
    assert f.shape == clean.shape and ok.dtype == torch.bool
    assert 0.003 < (f - clean).std() < 0.05 and 0.8 < ok.float().mean() < 0.999
    f0, ok0 = RealismAugment(prob=0.0).torch_batch(clean, good, g)
    assert torch.equal(f0, clean) and ok0.all()
    half, _ = RealismAugment(prob=0.5, snr_range=(100, 100)).torch_batch(clean, good, g)
    changed = (half != clean).any(1).float().mean()
    assert 0.2 < changed < 0.8
    with pytest.raises(ValueError, match="7514"):
        aug.torch_batch(clean[:, :100], good[:, :100])


# ------------------------------------------------------------------------------------------------ device stream
def test_pseudo_continuum_operator_matches_the_realism_fit():
    flux = synth.emulate(synth.sample_labels(20, seed=4))
    idx, op = pseudo_continuum_operator("apogee")
    ours = np.clip(flux[:, idx].astype(np.float64) @ op, 0.5, 1.5)
    assert np.allclose(ours, realism.pseudo_continuum(flux, synth.get_instrument("apogee")), atol=1e-5)


def _processor(labels):
    proc = SpectraFMProcessor(label_names=LABELS, context_length=256)
    proc.fit_labels(np.asarray(labels, np.float64))
    return proc


def test_synthetic_stream_spectra_and_batches():
    labels = synth.sample_labels(200, seed=5)
    proc = _processor(labels)
    clean = SyntheticStream(proc, LABELS, list(range(5)), labels, snr=None, continuum="pseudo", seed=0)
    f, good = clean.spectra(clean.pool[:16])
    ref = synth.generate(16, labels=labels[:16], continuum="pseudo").flux
    assert good.all() and np.allclose(f.numpy(), ref, atol=2e-5)  # the package's own clean pseudo-normalised flux
    noisy = SyntheticStream(proc, LABELS, list(range(5)), labels, snr=100.0, continuum="pseudo", seed=0)
    fn, _ = noisy.spectra(noisy.pool[:16])
    assert 0.005 < (fn - f).std() < 0.03
    stream = SyntheticStream(proc, ["TEFF", "FE_H"], [0, 4], labels, snr=(100, 300), window_prob=0.5,
                             window_width=(64, 7514), pixel_range=[0, 3757], seed=1)
    b = stream.batch(32)
    assert b["flux"].shape == (32, 256) and b["query_ids"].tolist() == [[0, 4]] * 32
    m = b["observed_mask"].bool()
    wl = synth.get_instrument("apogee").wavelength
    assert b["wavelength"][m].max() <= wl[3756] + 1e-2 and (b["flux"][~m] == 0).all()
    # labels come from the pool, scaled by the processor
    phys, _ = proc.unscale_labels(b["labels"].numpy(), np.zeros((32, 2)), ["TEFF", "FE_H"])
    assert any(np.allclose(phys[0], labels[i, [0, 4]], atol=1e-2) for i in range(len(labels)))
    with pytest.raises(ValueError, match="no label"):
        SyntheticStream(proc, ["VMIC"], [0], labels)
    with pytest.raises(ValueError, match="snr"):
        SyntheticStream(proc, LABELS, list(range(5)), labels, snr=(0, 10))


def test_array_stream_pixel_range_and_fixed_pixels():
    s = synth.generate(8, seed=6, snr=200, continuum="pseudo")
    proc = _processor(s.labels)
    proc.fit_flux(s.flux)
    st = ArrayStream(proc, ["FE_H"], [4], s.flux, s.wavelength, s.labels[:, 4:], pixel_range=[4107, 4619])
    g1, g2 = torch.Generator().manual_seed(0), torch.Generator().manual_seed(0)
    a, b = st.batch(rows=[0, 1, 2], generator=g1), st.batch(rows=[0, 1, 2], generator=g2)
    assert torch.equal(a["wavelength"], b["wavelength"])
    kept = a["wavelength"][a["observed_mask"].bool()]
    assert kept.min() >= s.wavelength[4107] - 1e-2 and kept.max() <= s.wavelength[4618] + 1e-2
    assert (a["observed_mask"].sum(1) > 230).all()  # 256 drawn; a few deep lines lie beyond clip_sigma


def test_cosine_progress_lr():
    assert cosine_progress_lr(0.0, 0, 1.0, warmup_steps=10) == pytest.approx(0.1)
    assert cosine_progress_lr(0.0, 10, 1.0, warmup_steps=10) == pytest.approx(1.0)
    assert cosine_progress_lr(0.5, 50, 1.0, floor=0.2) == pytest.approx(0.6)
    assert cosine_progress_lr(2.0, 99, 1.0, floor=0.2) == pytest.approx(0.2)


@pytest.mark.parametrize("name, on", [("pretrain_cpu", False), ("pretrain_paper", False),
                                      ("pretrain_recipe_cpu", True)])
def test_presets_expose_the_recipe_options(name, on):
    from conftest import REPO

    from spectrafm_hf.training.run import parse_args

    extra = ["--bf16", "false"] if "paper" in name else []
    m, d, t = parse_args([str(REPO / "scripts" / "configs" / f"{name}.yaml"), *extra])
    assert (d.window_prob > 0) == on and (RealismAugment.from_dict(d.augment) is not None) == on
    if on:
        assert d.window_width == [64, 7514] and RealismAugment.from_dict(d.augment).snr_range == (50.0, 500.0)
        base = parse_args([str(REPO / "scripts" / "configs" / "pretrain_cpu.yaml")])
        assert m.config_overrides == base[0].config_overrides and t.max_steps == base[2].max_steps


def test_streamed_batches_soften_flux_as_the_processor_does():
    """The GPU-side `pixel_batch` applies the processor's `flux_softening` and clip exactly as `normalize_arrays`."""
    from spectrafm_hf.training.synthetic_stream import pixel_batch

    proc = SpectraFMProcessor(flux_softening=2.0, clip_sigma=6.0)
    wavelength = torch.linspace(15100.0, 16900.0, 64, dtype=torch.float64)
    flux = 1.0 + torch.linspace(-3.0, 3.0, 64, dtype=torch.float64)[None] ** 3  # normalised -270 .. 270 sigma
    out = pixel_batch(flux, torch.ones_like(flux, dtype=torch.bool), wavelength, proc, context_length=64)
    x, good = proc.normalize_arrays(wavelength.numpy(), flux[0].numpy(), np.ones(64, bool))
    order = np.argsort(out["wavelength"][0].numpy())
    assert np.array_equal(out["observed_mask"][0].numpy()[order].astype(bool), good)
    assert 0 < good.sum() < 64 and np.abs(x[good]).max() > 4.0  # softened; beyond 6 (x = 2 sinh(3) ~ 20) lost
    assert np.allclose(out["flux"][0].numpy()[order][good], x[good], atol=1e-5)
