"""Figures people would rather look at than read (matplotlib, written to PNG; headless backend)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

__all__ = ["plot_attention", "plot_predicted_vs_true", "plot_calibration", "plot_kiel", "known_lines"]

LABEL_TEX = {"TEFF": r"$T_\mathrm{eff}$ [K]", "LOGG": r"$\log g$", "FE_H": "[Fe/H]", "MG_FE": "[Mg/Fe]",
             "O_FE": "[O/Fe]"}


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path):
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.tmp{path.suffix}")
    fig.savefig(tmp, dpi=130, bbox_inches="tight")
    tmp.replace(path)
    _plt().close(fig)
    return path


def known_lines(wmin: float, wmax: float, species: str | None = None, top: int = 12):
    """The strongest atomic lines (vacuum Angstrom) shipped with the package inside [wmin, wmax]:
    a list of (wavelength, label). Empty when the line table is not available."""
    path = Path(__file__).resolve().parent / "resources" / "lines" / "strongest_atomic_lines_by_band.csv"
    if not path.is_file():
        return []
    import pandas as pd

    t = pd.read_csv(path)
    t = t[(t["wl_vac_A"] >= wmin) & (t["wl_vac_A"] <= wmax)]
    if species:
        t = t[t["species"].str.startswith(species)]
    t = t.sort_values("strength_T4500_logPe0.5", ascending=False).drop_duplicates(subset=["wl_vac_A"]).head(top)
    wcol, scol = "wl_vac_A", "species"
    return [(float(w), str(s)) for w, s in zip(t[wcol], t[scol])]


def plot_attention(table, path, label="FE_H", title=None, lines=None):
    """A spectrum with the label query's attention per wavelength underneath and known lines marked.
    ``table`` is `SpectraFMPipeline.attention`'s output (wavelength, flux, attention[, line]). ``lines``:
    [(wavelength, name), ...] to mark; default: the 5 most attended lines when the table has a ``line`` column,
    else the strongest known lines."""
    plt = _plt()
    fig, (ax1, ax2) = plt.subplots(2, 1, figsize=(11, 5), sharex=True, gridspec_kw={"height_ratios": [2, 1]})
    wl, flux, att = (np.asarray(table[c], float) for c in ("wavelength", "flux", "attention"))
    ax1.plot(wl, flux, lw=0.6, color="k")
    ax1.set_ylabel("flux")
    ok = np.isfinite(att)
    ax2.plot(wl[ok], att[ok] / np.nanmax(att), lw=0.6, color="C3")
    ax2.set_ylabel(f"attention ({label})\nnormalised")
    ax2.set_xlabel(r"vacuum wavelength [$\AA$]")
    if lines is None and "line" in table.columns:
        from .lines import top_attended_lines

        lines = [(w, name) for w, name, _ in top_attended_lines(table, n=5)] or None
    lo, hi = ax1.get_ylim()
    for k, (w, name) in enumerate(lines if lines is not None else known_lines(wl.min(), wl.max())):
        for ax in (ax1, ax2):
            ax.axvline(w, color="C0", lw=0.6, alpha=0.5)
        # staggered heights, so that labels of neighbouring lines do not overprint each other
        ax1.text(w, hi - (0.04 + 0.07 * (k % 6)) * (hi - lo), f" {name}", fontsize=7, va="top", ha="left",
                 color="C0")
    ax1.set_title(title or f"Where the {label} query looks")
    return _save(fig, path)


def plot_predicted_vs_true(true, pred, err, path, label="FE_H", title=None, ax=None):
    """Predicted vs reference values with error bars and the RMSE / bias in the corner."""
    plt = _plt()
    own = ax is None
    if own:
        fig, ax = plt.subplots(figsize=(4.5, 4.5))
    true, pred, err = (np.asarray(a, float) for a in (true, pred, err))
    ok = np.isfinite(true) & np.isfinite(pred)
    ax.errorbar(true[ok], pred[ok], yerr=err[ok], fmt=".", ms=2, lw=0.3, alpha=0.6, color="C0")
    lo, hi = np.nanmin(true[ok]), np.nanmax(true[ok])
    pad = 0.05 * (hi - lo)
    ax.plot([lo - pad, hi + pad], [lo - pad, hi + pad], "k--", lw=0.8)
    r = pred[ok] - true[ok]
    ax.text(0.04, 0.96, f"RMSE {np.sqrt(np.mean(r**2)):.3g}\nbias {np.mean(r):+.3g}\nN {ok.sum()}",
            transform=ax.transAxes, va="top", fontsize=8)
    name = LABEL_TEX.get(label, label)
    ax.set_xlabel(f"reference {name}")
    ax.set_ylabel(f"predicted {name}")
    if title:
        ax.set_title(title, fontsize=9)
    return _save(fig, path) if own else ax


def plot_calibration(residuals_over_sigma: dict, path, title="Calibration"):
    """Empirical coverage vs nominal Gaussian coverage, one curve per label (perfect = the diagonal).
    ``residuals_over_sigma``: {label: (pred - true) / sigma}."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(4.5, 4.5))
    nominal = np.linspace(0.01, 0.99, 50)
    z = np.array([_probit((1 + p) / 2) for p in nominal])
    for label, zres in residuals_over_sigma.items():
        zres = np.abs(np.asarray(zres, float))
        zres = zres[np.isfinite(zres)]
        ax.plot(nominal, [(zres <= q).mean() for q in z], label=LABEL_TEX.get(label, label))
    ax.plot([0, 1], [0, 1], "k--", lw=0.8)
    for p in (0.68, 0.95):
        ax.axvline(p, color="0.8", lw=0.6)
    ax.set_xlabel("nominal coverage")
    ax.set_ylabel("empirical coverage")
    ax.set_title(title)
    ax.legend(fontsize=8)
    return _save(fig, path)


def _probit(p):
    from scipy.special import ndtri

    return float(ndtri(p))


def plot_kiel(teff, logg, color=None, path="kiel.png", color_label="[Fe/H]", title="Kiel diagram"):
    """logg vs Teff of the predictions (both axes reversed, as astronomers draw it)."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(5, 4.5))
    sc = ax.scatter(teff, logg, c=color, s=6, cmap="viridis")
    if color is not None:
        fig.colorbar(sc, ax=ax, label=color_label)
    ax.invert_xaxis()
    ax.invert_yaxis()
    ax.set_xlabel(LABEL_TEX["TEFF"])
    ax.set_ylabel(LABEL_TEX["LOGG"])
    ax.set_title(title)
    return _save(fig, path)
