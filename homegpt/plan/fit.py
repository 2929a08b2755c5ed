"""Fitting a scaling law to your own runs (`homegpt fit`): reading the results, Approach 3 and Approach 2.

`fit_approach3` fits L(N, D) = E + A / N^alpha + B / D^beta from (N, D, loss) points the way Hoffmann et al.
and Epoch AI did: log-sum-exp form, Huber loss on log loss summed over points, L-BFGS from a grid of starts.
The grid's 4,500 starts run as one vectorised batch (numpy, analytic gradients), then the best few are
polished with scipy's L-BFGS-B. `fit_approach2` fits a parabola per IsoFLOP budget, then N_opt = k C^a.
"""

from __future__ import annotations

import csv
import functools
import itertools
import json
import math
import os
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from scipy.optimize import minimize

from homegpt.errors import UserError
from homegpt.plan.scaling import Law

HUBER_DELTA = 1e-3
MIN_POINTS = 5


# ---- reading results ---------------------------------------------------------------------------------

_COLUMNS = {
    "params": ("params", "parameters", "n", "n params", "num params", "model size"),
    "tokens": ("tokens", "d", "training tokens", "train tokens", "tokens trained"),
    "flops": ("flops", "c", "compute", "training flop", "training flops"),
    "loss": ("loss", "val loss", "final loss", "eval loss"),
    "budget": ("budget", "flops budget", "budget flops"),
}


@dataclass
class Results:
    params: np.ndarray
    tokens: np.ndarray
    flops: np.ndarray
    loss: np.ndarray
    budget: np.ndarray | None = None  # the nominal IsoFLOP budget of each run, when the file records it
    skipped: int = 0

    def __len__(self) -> int:
        return len(self.loss)

    def drop_highest(self, k: int) -> Results:
        if k < 0:
            raise UserError(f"--drop-highest must be 0 or more, got {k}")
        keep = np.sort(np.argsort(self.loss, kind="stable")[: len(self.loss) - k])
        if len(keep) < MIN_POINTS:
            raise UserError(f"dropping {k} of {len(self)} runs leaves fewer than {MIN_POINTS} to fit")
        return self.subset(keep)

    def subset(self, idx: np.ndarray) -> Results:
        b = None if self.budget is None else self.budget[idx]
        return Results(self.params[idx], self.tokens[idx], self.flops[idx], self.loss[idx], b, self.skipped)


def _norm(name: str) -> str:
    return " ".join(name.strip().lower().replace("_", " ").replace("-", " ").split())


def read_results(path: str | Path) -> Results:
    """Runs from CSV or JSON (a list of objects, or {"runs": [...]}) with params, loss and tokens or flops.

    Rows with a missing or non-numeric value are skipped (counted); a zero or negative value is an error.
    """
    p = Path(path)
    if not p.is_file():
        raise UserError(f"results file {p} does not exist")
    rows = _read_rows(p)
    keys = {_norm(k): k for row in rows[:1] for k in row}
    col = {role: next((keys[a] for a in names if a in keys), None) for role, names in _COLUMNS.items()}
    if col["params"] is None or col["loss"] is None or (col["tokens"] is None and col["flops"] is None):
        raise UserError(f"{p}: need columns for parameters (params or 'Model Size'), loss, and tokens or "
                        f"flops; found {', '.join(keys.values()) or 'none'}")
    out: dict[str, list[float]] = {r: [] for r in _COLUMNS}
    skipped = 0
    for i, row in enumerate(rows, start=2 if p.suffix.lower() != ".json" else 1):
        vals = {r: _number(row.get(c)) if c else None for r, c in col.items()}
        need = ["params", "loss", "tokens" if col["tokens"] else "flops"]
        if any(vals[r] is None for r in need):
            skipped += 1
            continue
        for r in (*need, "flops", "budget"):
            if vals[r] is not None and vals[r] <= 0:
                raise UserError(f"{p} row {i}: {col[r]} must be positive, got {vals[r]:g}")
        n = vals["params"]
        d = vals["tokens"] if vals["tokens"] is not None else vals["flops"] / (6 * n)
        out["params"].append(n)
        out["tokens"].append(d)
        out["flops"].append(vals["flops"] if vals["flops"] is not None else 6 * n * d)
        out["loss"].append(vals["loss"])
        out["budget"].append(vals["budget"] if vals["budget"] is not None else math.nan)
    if len(out["loss"]) < MIN_POINTS:
        raise UserError(f"{p} has {len(out['loss'])} usable runs ({skipped} skipped): a fit needs at least "
                        f"{MIN_POINTS}")
    budget = np.array(out["budget"])
    return Results(*(np.array(out[r]) for r in ("params", "tokens", "flops", "loss")),
                   budget=None if np.isnan(budget).any() else budget, skipped=skipped)


def _read_rows(p: Path) -> list[dict]:
    try:
        text = p.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise UserError(f"{p} is not UTF-8 text") from None
    if p.suffix.lower() == ".json":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise UserError(f"{p} is not valid JSON: {e}") from None
        rows = data.get("runs") if isinstance(data, dict) else data
        if not isinstance(rows, list) or not all(isinstance(r, dict) for r in rows):
            raise UserError(f"{p}: expected a list of run objects or {{\"runs\": [...]}}")
        return rows
    return list(csv.DictReader(text.splitlines()))


def _number(value) -> float | None:
    try:
        x = float(value)
    except (TypeError, ValueError):
        return None
    return x if math.isfinite(x) else None


# ---- Approach 3: fit E, A, B, alpha, beta ----------------------------------------------------------------

# Hoffmann et al.'s grid of starting points, as in Epoch AI's replication: 6 * 6 * 5 * 5 * 5 = 4,500 starts.
GRID = {"a": np.arange(0, 30, 5.0), "b": np.arange(0, 30, 5.0), "e": np.arange(-1, 1.5, 0.5),
        "alpha": np.arange(0, 2.5, 0.5), "beta": np.arange(0, 2.5, 0.5)}


def objective(x: np.ndarray, ln_n, ln_d, ln_l, weights=None, delta: float = HUBER_DELTA):
    """Summed Huber loss of LSE(a - alpha ln N, b - beta ln D, e) - ln L, and its gradient, for a batch.

    x: (S, 5) rows (a, b, e, alpha, beta); weights: None, (n,) or (S, n) point weights (bootstrap counts).
    Returns f (S,) and grad (S, 5). Summing, not averaging, keeps L-BFGS's tolerances meaningful.
    """
    if len(x) < PARALLEL_ROWS or _CORES < 2:
        return _objective(x, ln_n, ln_d, ln_l, weights, delta)
    # numpy's ufuncs release the GIL: big batches are split across the cores.
    parts = np.array_split(np.arange(len(x)), _CORES)
    per_row = weights is not None and np.ndim(weights) == 2
    jobs = [_pool().submit(_objective, x[p], ln_n, ln_d, ln_l, weights[p] if per_row else weights, delta)
            for p in parts]
    outs = [j.result() for j in jobs]
    return np.concatenate([o[0] for o in outs]), np.concatenate([o[1] for o in outs])


PARALLEL_ROWS = 512
_CORES = min(4, os.cpu_count() or 1)


@functools.cache
def _pool() -> ThreadPoolExecutor:
    return ThreadPoolExecutor(_CORES)


def _objective(x, ln_n, ln_d, ln_l, weights, delta):
    with np.errstate(all="ignore"):  # trial steps can be wild: non-finite rows get f = inf and are rejected
        return _objective_rows(x, ln_n, ln_d, ln_l, weights, delta)


def _objective_rows(x, ln_n, ln_d, ln_l, weights, delta):
    # In-place numpy on (S, n) arrays: this function is where the fit spends its time.
    a, b, e, al, be = (x[:, i : i + 1] for i in range(5))
    w1 = np.multiply(al, -ln_n)
    w1 += a
    w2 = np.multiply(be, -ln_d)
    w2 += b
    m = np.maximum(w1, w2)
    np.maximum(m, e, out=m)  # shift by the max: exp never overflows
    w1 -= m
    np.exp(w1, out=w1)
    w2 -= m
    np.exp(w2, out=w2)
    w3 = np.subtract(e, m)
    np.exp(w3, out=w3)
    s = w1 + w2
    s += w3
    res = np.log(s)
    res += m
    res -= ln_l  # residual of LSE(...) against ln L
    c = np.clip(res, -delta, delta)  # Huber'(res)
    res -= 0.5 * c
    res *= c  # Huber(res) = c (res - c/2): quadratic inside delta, linear outside
    if weights is not None:
        res *= weights
        c *= weights
    c /= s  # times d LSE / d r_k = w_k / s
    w1 *= c
    w2 *= c
    w3 *= c
    grad = np.stack([w1.sum(1), w2.sum(1), w3.sum(1), -(w1 @ ln_n), -(w2 @ ln_d)], axis=1)
    f = res.sum(1)
    bad = ~(np.isfinite(f) & np.isfinite(grad).all(1))
    f[bad], grad[bad] = np.inf, 0.0
    return f, grad


def lbfgs_batch(fg, x0: np.ndarray, memory: int = 10, max_iter: int = 400,
                gtol: float = 1e-5, ftol: float = 2.2e-9) -> tuple[np.ndarray, np.ndarray]:
    """L-BFGS on S independent problems at once (two-loop recursion, backtracking Armijo line search).

    fg(x, rows) -> (f, grad) for the rows `rows` of the batch. Stops each row on scipy's L-BFGS-B
    criteria (relative decrease <= ftol or max |grad| <= gtol) or when its line search fails.
    """
    with np.errstate(all="ignore"):  # degenerate rows (flat or wild) are caught by the checks below
        return _lbfgs_batch(fg, x0, memory, max_iter, gtol, ftol)


def _lbfgs_batch(fg, x0, memory, max_iter, gtol, ftol):
    x = x0.astype(float).copy()
    rows_all = np.arange(len(x))
    f, g = fg(x, rows_all)
    s_hist, y_hist = np.zeros((memory, *x.shape)), np.zeros((memory, *x.shape))
    rho, gamma = np.zeros((memory, len(x))), np.ones(len(x))
    active = np.ones(len(x), bool)
    for it in range(max_iter):
        idx = np.flatnonzero(active)
        if idx.size == 0:
            break
        q, alphas = g[idx].copy(), np.zeros((memory, idx.size))
        order = [(it - 1 - j) % memory for j in range(memory)]  # newest pair first
        for j in order:
            alphas[j] = rho[j, idx] * np.einsum("ij,ij->i", s_hist[j, idx], q)
            q -= alphas[j][:, None] * y_hist[j, idx]
        r = gamma[idx, None] * q
        for j in reversed(order):
            bj = rho[j, idx] * np.einsum("ij,ij->i", y_hist[j, idx], r)
            r += s_hist[j, idx] * (alphas[j] - bj)[:, None]
        p = -r
        slope = np.einsum("ij,ij->i", g[idx], p)
        # A stale curvature history (uphill or non-finite direction): restart those rows as steepest descent.
        uphill = ~(slope < 0) | ~np.isfinite(p).all(1)
        p[uphill], slope[uphill] = -g[idx][uphill], -np.einsum("ij,ij->i", g[idx][uphill], g[idx][uphill])
        rho[:, idx[uphill]] = 0.0
        # First step of a row: small, scaled by the gradient (as L-BFGS-B does); later steps try 1 first.
        t = 1.0 / np.maximum(np.abs(g[idx]).max(1), 1e-12) * 0.1 if it == 0 else np.ones(idx.size)
        f_new, g_new, ok = np.empty(idx.size), np.empty((idx.size, x.shape[1])), np.zeros(idx.size, bool)
        pending = np.arange(idx.size)
        for _ in range(30):
            fc, gc = fg(x[idx[pending]] + t[pending, None] * p[pending], idx[pending])
            accept = fc <= f[idx[pending]] + 1e-4 * t[pending] * slope[pending]
            done = pending[accept]
            f_new[done], g_new[done], ok[done] = fc[accept], gc[accept], True
            rejected, f_rej = pending[~accept], fc[~accept]
            pending = rejected
            if pending.size == 0:
                break
            # Backtrack to the minimum of the quadratic through f(0), f'(0) and f(t), kept in [0.1 t, 0.5 t].
            tp, f0, sl = t[pending], f[idx[pending]], slope[pending]
            with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
                t_quad = -sl * tp * tp / (2.0 * (f_rej - f0 - sl * tp))
            t[pending] = np.clip(np.nan_to_num(t_quad, nan=0.1 * tp, posinf=0.5 * tp), 0.1 * tp, 0.5 * tp)
        active[idx[~ok]] = False
        moved, k = idx[ok], np.flatnonzero(ok)
        step, dg = t[k, None] * p[k], g_new[k] - g[moved]
        sy, yy = np.einsum("ij,ij->i", step, dg), np.einsum("ij,ij->i", dg, dg)
        # keep only clearly positive curvature pairs
        good = (sy > 1e-10 * np.sqrt(yy) * np.linalg.norm(step, axis=1)) & (sy > 1e-200) & np.isfinite(yy)
        slot = it % memory
        s_hist[slot, moved], y_hist[slot, moved] = step, dg
        rho[slot, moved] = np.where(good, 1.0 / np.where(good, sy, 1.0), 0.0)
        rho[slot, idx[~ok]] = 0.0
        gamma[moved] = np.where(good, sy / np.maximum(yy, 1e-300), gamma[moved])
        f_old = f[moved].copy()
        x[moved] += step
        f[moved], g[moved] = f_new[k], g_new[k]
        rel = (f_old - f[moved]) / np.maximum(np.maximum(np.abs(f_old), np.abs(f[moved])), 1.0)
        active[moved[(rel <= ftol) | (np.abs(g[moved]).max(1) <= gtol)]] = False
    return x, f


@dataclass
class Fit:
    E: float
    A: float
    B: float
    alpha: float
    beta: float
    objective: float
    n_points: int
    starts: int
    seconds: float
    intervals: dict = field(default_factory=dict)  # name -> {"se", "lo", "hi"} from the bootstrap

    def law(self, name: str = "fit", reference: str = "") -> Law:
        return Law(name, self.E, self.A, self.B, self.alpha, self.beta, "homegpt fit (Approach 3)", reference)


# Published fits of this form: alpha 0.28-0.37, beta 0.28-0.37, A and B 400-2,100 (Hoffmann et al. 2022, Epoch
# AI 2024, ../shared/reference/scaling.md). Far beyond them, a fit says more about too few runs than about scaling.
PLAUSIBLE_EXPONENT = (0.05, 1.5)
PLAUSIBLE_CONSTANT = 1e8
WIDE_EXPONENT = 1.0  # a 95% interval this wide for alpha or beta


def implausible(fit: Fit) -> list[str]:
    """Warnings for a fit whose exponents or constants are far outside every published fit, or whose bootstrap
    intervals are huge: its numbers should not be read as a scaling law."""
    found = []
    for name in ("alpha", "beta"):
        value, (lo, hi) = getattr(fit, name), PLAUSIBLE_EXPONENT
        if value > 0 and not lo <= value <= hi:
            found.append(f"{name} = {value:.3g}, far from published fits (0.28 to 0.37)")
        ci = fit.intervals.get(name)
        if ci and ci["hi"] - ci["lo"] > WIDE_EXPONENT:
            found.append(f"{name}'s 95% interval {ci['lo']:.3g} .. {ci['hi']:.3g} is wider than {WIDE_EXPONENT:g}")
    for name in ("A", "B"):
        if getattr(fit, name) > PLAUSIBLE_CONSTANT:
            found.append(f"{name} = {getattr(fit, name):.3g}, far above published fits (400 to 2,100)")
    if not found:
        return []
    return [f"{'; '.join(found)}: the runs are too few, or span too small a range of sizes and budgets, to pin "
            f"the law down; read this fit as illustrative (add runs: more sizes per budget, budgets a decade apart)"]


def _to_fit(x: np.ndarray, f: float, n: int, starts: int, seconds: float) -> Fit:
    a, b, e, al, be = (float(v) for v in x)
    return Fit(math.exp(e), math.exp(a), math.exp(b), al, be, float(f), n, starts, seconds)


def fit_approach3(params, tokens, loss, delta: float = HUBER_DELTA, polish: int = 10) -> Fit:
    """Fit L = E + A/N^alpha + B/D^beta: every grid start in one batch, then the best `polish` refined."""
    t0 = time.perf_counter()
    ln_n, ln_d, ln_l = (np.log(np.asarray(v, float)) for v in (params, tokens, loss))
    x0 = np.array(list(itertools.product(*GRID.values())), float)
    x, f = lbfgs_batch(lambda xs, rows: objective(xs, ln_n, ln_d, ln_l, None, delta), x0)

    def one(v):
        fv, gv = objective(v[None], ln_n, ln_d, ln_l, None, delta)
        return fv[0], gv[0]

    best_x, best_f = x[np.argmin(f)], float(np.min(f))
    for i in np.argsort(f)[:polish]:  # scipy's line search finishes what the batched one got close to
        r = minimize(one, x[i], jac=True, method="L-BFGS-B")
        if np.isfinite(r.fun) and r.fun < best_f:
            best_x, best_f = r.x, float(r.fun)
    return _to_fit(best_x, best_f, len(ln_l), len(x0), time.perf_counter() - t0)


def bootstrap(fit: Fit, params, tokens, loss, samples: int, seed: int = 0, delta: float = HUBER_DELTA) -> Fit:
    """Refit on `samples` resamples of the runs (with replacement): standard deviations (the standard errors
    Epoch AI report) and 95% percentile intervals, which stay meaningful when a few resamples degenerate.

    Every resample starts from the full-data optimum; resamples are fitted together as one batch, the
    resampling expressed as integer point weights.
    """
    if samples < 2:
        raise UserError(f"--bootstrap needs at least 2 resamples, got {samples}")
    ln_n, ln_d, ln_l = (np.log(np.asarray(v, float)) for v in (params, tokens, loss))
    rng = np.random.default_rng(seed)
    weights = rng.multinomial(len(ln_l), np.full(len(ln_l), 1.0 / len(ln_l)), size=samples).astype(float)
    start = np.array([math.log(fit.A), math.log(fit.B), math.log(fit.E), fit.alpha, fit.beta])
    x, _ = lbfgs_batch(lambda xs, rows: objective(xs, ln_n, ln_d, ln_l, weights[rows], delta),
                       np.tile(start, (samples, 1)), max_iter=1000, ftol=0.0)
    values = {"A": np.exp(x[:, 0]), "B": np.exp(x[:, 1]), "E": np.exp(x[:, 2]), "alpha": x[:, 3], "beta": x[:, 4]}
    values["n_exponent"] = x[:, 4] / (x[:, 3] + x[:, 4])
    fit.intervals = {k: {"se": float(np.std(v, ddof=1)), "lo": float(np.percentile(v, 2.5)),
                         "hi": float(np.percentile(v, 97.5))} for k, v in values.items()}
    return fit


# ---- Approach 2: a parabola per IsoFLOP budget, then N_opt = k C^a ------------------------------------


def group_budgets(flops: np.ndarray, budget: np.ndarray | None = None, gap_decades: float = 0.05) -> np.ndarray:
    """A group id per run: the recorded budget, or runs whose FLOPs lie within ~12% of a neighbour."""
    if budget is not None:
        return np.unique(budget, return_inverse=True)[1]
    order = np.argsort(flops)
    logc = np.log10(flops[order])
    ids = np.concatenate([[0], np.cumsum(np.diff(logc) > gap_decades)])
    groups = np.empty(len(flops), int)
    groups[order] = ids
    return groups


def fit_approach2(params, flops, loss, budget=None, min_sizes: int = 3) -> dict:
    """Per budget with >= min_sizes sizes: fit loss = c0 + c1 x + c2 x^2 in x = ln N, minimum at -c1 / 2c2.

    A budget whose parabola opens downward or whose minimum lies outside the sizes tried is left out:
    extrapolating a parabola says nothing. Needs two usable budgets for N_opt = k C^a.
    """
    params, flops, loss = (np.asarray(v, float) for v in (params, flops, loss))
    groups = group_budgets(flops, None if budget is None else np.asarray(budget, float))
    minima = []
    for gid in np.unique(groups):
        sel = groups == gid
        x = np.log(params[sel])
        if len(np.unique(np.round(x, 6))) < min_sizes:
            continue
        c2, c1, c0 = np.polyfit(x, loss[sel], 2)
        if c2 <= 0 or not x.min() <= -c1 / (2 * c2) <= x.max():
            continue
        xs = -c1 / (2 * c2)
        minima.append({"flops": float(np.exp(np.mean(np.log(flops[sel])))), "n_opt": float(np.exp(xs)),
                       "loss": float(c0 - c1 * c1 / (4 * c2)), "runs": int(sel.sum())})
    if len(minima) < 2:
        return {"usable_budgets": len(minima), "budgets": minima,
                "note": f"needs >= 2 budgets with >= {min_sizes} sizes each and an interior minimum"}
    c = np.log([m["flops"] for m in minima])
    n = np.log([m["n_opt"] for m in minima])
    a, logk = np.polyfit(c, n, 1)
    return {"usable_budgets": len(minima), "budgets": minima, "a": float(a), "k": float(np.exp(logk)),
            "d_exponent": float(1 - a)}
