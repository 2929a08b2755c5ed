"""The pictures of `homegpt plan --plot` and `homegpt fit --plot`: IsoFLOP curves and a fitted law against
its runs (matplotlib, files only)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from homegpt.errors import UserError
from homegpt.plan.fit import group_budgets
from homegpt.plan.scaling import Law, constrained_loss, constrained_optimum


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: str | Path) -> Path:
    out = Path(path)
    if not out.parent.exists():
        raise UserError(f"folder {out.parent} does not exist: create it or choose another --plot path")
    fig.tight_layout()
    fig.savefig(out)
    _pyplot().close(fig)
    return out


def _sci(x: float) -> str:
    """3.2e17 rather than 3.2e+17."""
    text = f"{x:.2g}"
    if "e" not in text:
        return text
    mantissa, exponent = text.split("e")
    return f"{mantissa}e{int(exponent)}"


def plot_isoflop(law: Law, flops: float, path: str | Path, chosen: tuple[float, float] | None = None,
                 unique: float | None = None) -> Path:
    """Loss against N for budgets around `flops`, each curve's minimum marked, the frontier, the chosen run."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7.5, 4.8), dpi=120)
    budgets = flops * np.logspace(-1, 1, 5)
    n_mid = law.optimum(flops)[0]
    ns = np.logspace(math.log10(n_mid) - 1.3, math.log10(n_mid) + 1.3, 300)
    colors = plt.cm.viridis(np.linspace(0.1, 0.85, len(budgets)))
    for c, color in zip(budgets, colors, strict=True):
        loss = law.loss(ns, c / (6 * ns))
        ax.plot(ns, loss, color=color, lw=1.6, label=f"C = {_sci(c)} FLOPs")
        n_opt, d_opt = law.optimum(c)
        ax.plot([n_opt], [law.loss(n_opt, d_opt)], "o", color=color, ms=5)
        if unique is not None and unique < c / (6 * ns[0]):
            lc = [constrained_loss(law, n, c / (6 * n), unique) for n in ns]
            ax.plot(ns, lc, color=color, lw=1.0, ls="--")
            n_c, d_c = constrained_optimum(law, c, unique)
            ax.plot([n_c], [constrained_loss(law, n_c, d_c, unique)], "o", mfc="none", color=color, ms=6)
    frontier_c = np.logspace(math.log10(budgets[0]) - 0.3, math.log10(budgets[-1]) + 0.3, 50)
    fn, fd = law.optimum(frontier_c)
    ax.plot(fn, law.loss(fn, fd), color="0.35", lw=1.0, ls=":", label="compute-optimal frontier")
    if chosen is not None:
        n, d = chosen
        y = constrained_loss(law, n, d, unique) if unique is not None and unique < d else law.loss(n, d)
        ax.plot([n], [y], marker="*", color="crimson", ms=14, ls="none", label=f"chosen: {n / 1e6:.1f}M params")
    ax.set_xscale("log")
    lo = float(law.loss(*law.optimum(budgets[-1])))
    hi = float(law.loss(*law.optimum(budgets[0])))
    ax.set_ylim(lo - 0.15 * (hi - lo) - 0.05, hi + 0.9 * (hi - lo) + 0.1)
    ax.set_xlabel("parameters N (log scale; embeddings included)")
    ax.set_ylabel("predicted loss (nats/token, law's reference data)")
    title = f"IsoFLOP curves, law {law.name!r}" + (f"; dashed: only {_sci(unique)} unique tokens" if unique else "")
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8, loc="upper right")
    return _save(fig, path)


def plot_fit(params, flops, loss, law: Law, path: str | Path) -> Path:
    """The runs (loss against N, coloured by compute) and the fitted law's IsoFLOP curve through each budget."""
    plt = _pyplot()
    params, flops, loss = (np.asarray(v, float) for v in (params, flops, loss))
    fig, ax = plt.subplots(figsize=(7.5, 4.8), dpi=120)
    groups = group_budgets(flops)
    norm = plt.matplotlib.colors.LogNorm(flops.min(), flops.max() * 1.0001)
    sc = ax.scatter(params, loss, c=flops, cmap="viridis", norm=norm, s=14, zorder=3)
    for gid in np.unique(groups):
        sel = groups == gid
        c = float(np.exp(np.mean(np.log(flops[sel]))))
        lo, hi = params[sel].min(), params[sel].max()
        ns = np.logspace(math.log10(lo) - 0.2, math.log10(hi) + 0.2, 100)
        ax.plot(ns, law.loss(ns, c / (6 * ns)), color=plt.cm.viridis(norm(c)), lw=1.2)
    fig.colorbar(sc, ax=ax, label="training compute C (FLOPs)")
    ax.set_xscale("log")
    ax.set_xlabel("parameters N (log scale)")
    ax.set_ylabel("final loss (nats/token)")
    ax.set_title(f"fit: E={law.E:.3f}, A={law.A:.4g}, B={law.B:.4g}, alpha={law.alpha:.3f}, beta={law.beta:.3f}",
                 fontsize=9)
    ax.grid(alpha=0.3, which="both")
    return _save(fig, path)
