"""Scaling laws: L(N, D) = E + A / N^alpha + B / D^beta, its compute optimum, and its data-constrained form.

N counts all parameters with a tied embedding once; D counts training tokens; compute is C = 6 N D.
Built-in laws come from published fits (see docs/planning.md and the sources below); fit.py fits your own
from your runs.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from scipy.optimize import minimize_scalar

from homegpt.errors import UserError, closest

# Muennighoff et al. 2023 (arXiv 2305.16264): repeated data and excess parameters decay with these constants.
R_STAR_D = 15.39
R_STAR_N = 5.31


@dataclass(frozen=True)
class Law:
    name: str
    E: float
    A: float
    B: float
    alpha: float
    beta: float
    source: str = ""
    # What the loss is measured on: a prediction in these units is not a promise on other data.
    reference: str = ""

    def loss(self, n, d):
        return self.E + self.A / np.power(n, self.alpha) + self.B / np.power(d, self.beta)

    @property
    def G(self) -> float:
        return (self.alpha * self.A / (self.beta * self.B)) ** (1.0 / (self.alpha + self.beta))

    @property
    def n_exponent(self) -> float:
        """a in N_opt ∝ C^a (and D_opt ∝ C^(1-a))."""
        return self.beta / (self.alpha + self.beta)

    def optimum(self, flops: float) -> tuple[float, float]:
        """Closed-form argmin of L(N, D) subject to 6ND = C (set dL/dN = 0 along the constraint)."""
        s = flops / 6.0
        n = self.G * s ** (self.beta / (self.alpha + self.beta))
        return n, s / n

    def tokens_per_param(self, flops: float) -> float:
        n, d = self.optimum(flops)
        return d / n

    def to_dict(self) -> dict:
        return asdict(self)


_HOFFMANN_REF = "MassiveText, Chinchilla's SentencePiece tokenizer (Hoffmann et al. 2022)"
LAWS: dict[str, Law] = {
    "epoch": Law("epoch", 1.8172, 482.01, 2085.43, 0.3478, 0.3658,
                 "Besiroglu et al. 2024 (Epoch AI), arXiv 2404.10102", _HOFFMANN_REF),
    "hoffmann": Law("hoffmann", math.exp(0.5267228), math.exp(6.0073404), math.exp(6.0179186),
                    0.33917084, 0.2849083, "Hoffmann et al. 2022, unrounded (paper TeX source)", _HOFFMANN_REF),
    "hoffmann-rounded": Law("hoffmann-rounded", 1.69, 406.4, 410.7, 0.34, 0.28,
                            "Hoffmann et al. 2022, App. D.2 as printed", _HOFFMANN_REF),
    "muennighoff": Law("muennighoff", 1.870, 520.8, 1487.7, 0.3527, 0.3527,
                       "Muennighoff et al. 2023, arXiv 2305.16264", "C4, GPT-2 tokenizer (Muennighoff et al. 2023)"),
}


def load_law(spec: str) -> Law:
    """A built-in law by name, or a JSON file written by `homegpt fit --out` (keys E, A, B, alpha, beta)."""
    if spec in LAWS:
        return LAWS[spec]
    path = Path(spec)
    if not path.is_file():
        raise UserError(f"unknown law {spec!r}{closest(spec, LAWS)}: use one of {', '.join(LAWS)} "
                        f"or a JSON file written by homegpt fit --out")
    try:
        d = json.loads(path.read_text(encoding="utf-8"))
        values = {k: float(d[k]) for k in ("E", "A", "B", "alpha", "beta")}
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise UserError(f"law file {path} is not valid JSON: write it with homegpt fit --out") from None
    except (KeyError, TypeError, ValueError):
        raise UserError(f"law file {path} needs numeric keys E, A, B, alpha, beta") from None
    if not all(math.isfinite(v) for v in values.values()) or min(values.values()) <= 0:
        raise UserError(f"law file {path}: E, A, B, alpha and beta must be positive finite numbers")
    return Law(name=str(d.get("name", path.stem)), source=str(d.get("source", str(path))),
               reference=str(d.get("reference", f"the runs fitted into {path.name}")), **values)


# ---- data-constrained training (Muennighoff et al. 2023) -----------------------------------------------


def effective_data(d: float, unique: float) -> float:
    """D' = U + U R* (1 - exp(-R / R*)), R = D/U - 1 repeats: each repeat is worth less than fresh text."""
    if d <= unique:
        return d
    repeats = d / unique - 1.0
    return unique + unique * R_STAR_D * (1.0 - math.exp(-repeats / R_STAR_D))


def unique_params(law: Law, unique: float) -> float:
    """U_N: the parameter count whose compute-optimal data is exactly U tokens (inverse of optimum)."""
    return law.G * (unique * law.G) ** (law.beta / law.alpha)


def effective_params(n: float, base: float) -> float:
    """N' = U_N + U_N R_N* (1 - exp(-R_N / R_N*)): parameters beyond what U tokens can use are worth less."""
    if n <= base:
        return n
    excess = n / base - 1.0
    return base + base * R_STAR_N * (1.0 - math.exp(-excess / R_STAR_N))


def constrained_loss(law: Law, n: float, d: float, unique: float) -> float:
    un = min(unique_params(law, unique), n)
    return float(law.loss(effective_params(n, un), effective_data(d, unique)))


def constrained_optimum(law: Law, flops: float, unique: float) -> tuple[float, float]:
    """argmin over N of the Muennighoff loss along 6ND = C, when only `unique` distinct tokens exist."""
    n_free, _ = law.optimum(flops)
    lo, hi = math.log(n_free) - 6.0, math.log(n_free) + 3.0
    grid = np.linspace(lo, hi, 181)  # coarse scan first: the constrained curve need not be unimodal
    values = [constrained_loss(law, math.exp(x), flops / (6 * math.exp(x)), unique) for x in grid]
    i = int(np.argmin(values))
    res = minimize_scalar(lambda x: constrained_loss(law, math.exp(x), flops / (6 * math.exp(x)), unique),
                          bounds=(grid[max(i - 1, 0)], grid[min(i + 1, len(grid) - 1)]), method="bounded")
    n = math.exp(res.x)
    return n, flops / (6 * n)
