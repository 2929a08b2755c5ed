"""Scaling laws: closed-form optimum, data-constrained formulas, reading results, and the Approach 2/3 fits."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from scipy.optimize import minimize_scalar

from homegpt.errors import UserError
from homegpt.plan.fit import bootstrap, fit_approach2, fit_approach3, lbfgs_batch, read_results
from homegpt.plan.scaling import LAWS, Law, constrained_loss, constrained_optimum, effective_data, load_law

CHINCHILLA = Path(__file__).resolve().parents[1] / "fixtures" / "chinchilla_fig4_points.csv"
TRUE = Law("true", 1.9, 300.0, 1200.0, 0.32, 0.38)


def synthetic_runs(law: Law, noise: float, seed: int = 0):
    """An IsoFLOP grid: 6 budgets x 7 sizes around each budget's optimum, loss times exp(noise * z)."""
    rng = np.random.default_rng(seed)
    rows = []
    for c in np.logspace(16, 19, 6):
        n_opt = law.optimum(c)[0]
        for n in n_opt * np.logspace(-0.9, 0.9, 7):
            d = c / (6 * n)
            rows.append((n, d, c, float(law.loss(n, d)) * math.exp(noise * rng.standard_normal())))
    return (np.array(col) for col in zip(*rows, strict=True))


@pytest.mark.parametrize("name", sorted(LAWS))
@pytest.mark.parametrize("flops", [1e15, 3.2e17, 1e21])
def test_closed_form_optimum_equals_brute_force_along_the_isoflop_curve(name, flops):
    law = LAWS[name]
    n_opt, d_opt = law.optimum(flops)
    assert 6 * n_opt * d_opt == pytest.approx(flops, rel=1e-12)
    grid = np.logspace(math.log10(n_opt) - 3, math.log10(n_opt) + 3, 20001)
    i = int(np.argmin(law.loss(grid, flops / (6 * grid))))
    res = minimize_scalar(lambda x: float(law.loss(math.exp(x), flops / (6 * math.exp(x)))),
                          bounds=(math.log(grid[i - 1]), math.log(grid[i + 1])), method="bounded",
                          options={"xatol": 1e-10})
    assert math.exp(res.x) == pytest.approx(n_opt, rel=1e-4)


def test_reference_check_values():
    n, d = LAWS["hoffmann-rounded"].optimum(3.2e17)
    assert n == pytest.approx(48.2e6, rel=0.01) and d == pytest.approx(1.107e9, rel=0.01)
    n, d = LAWS["hoffmann-rounded"].optimum(2.3e18)
    assert n == pytest.approx(117e6, rel=0.05) and d == pytest.approx(3.3e9, rel=0.05)
    for c in (1e17, 1e18):  # Epoch's fit: about 26 tokens per parameter here
        assert 24 < LAWS["epoch"].tokens_per_param(c) < 28


def test_effective_data_follows_muennighoff():
    u = 1e9
    assert effective_data(0.5 * u, u) == 0.5 * u  # fewer tokens than the data: nothing repeats
    assert effective_data(4 * u, u) / (4 * u) > 0.9  # ~4 epochs nearly as good as fresh text
    assert effective_data(1000 * u, u) == pytest.approx(u * (1 + 15.39), rel=1e-3)  # saturates at U(1 + R*)
    assert effective_data(40 * u, u) / (40 * u) < 0.5


def test_constrained_optimum_uses_fewer_params_and_more_epochs():
    law = LAWS["epoch"]
    c = 3.2e17
    n_free, d_free = law.optimum(c)
    n, d = constrained_optimum(law, c, 1e12)  # plenty of data: the free optimum
    assert n == pytest.approx(n_free, rel=1e-3)
    n, d = constrained_optimum(law, c, d_free / 8)
    assert n < n_free and d > d_free
    # it minimises the constrained loss along 6ND = C
    for k in (0.8, 1.25):
        assert constrained_loss(law, n, d, d_free / 8) <= constrained_loss(law, n * k, d / k, d_free / 8)


def test_batched_lbfgs_solves_independent_quadratics():
    centres = np.random.default_rng(1).normal(size=(50, 3))
    scales = np.array([1.0, 10.0, 100.0])

    def fg(x, rows):
        diff = x - centres[rows]
        return (scales * diff**2).sum(1), 2 * scales * diff

    x, f = lbfgs_batch(fg, np.zeros((50, 3)), gtol=1e-10, ftol=0.0)
    assert np.allclose(x, centres, atol=1e-6) and f.max() < 1e-10


def test_fit_recovers_a_known_law_from_noisy_points():
    n, d, c, loss = synthetic_runs(TRUE, noise=0.003)
    fit = fit_approach3(n, d, loss)
    assert fit.alpha == pytest.approx(TRUE.alpha, abs=0.03)
    assert fit.beta == pytest.approx(TRUE.beta, abs=0.03)
    assert fit.E == pytest.approx(TRUE.E, abs=0.05)
    # the quantity a planner uses: the compute-optimal exponent, and N_opt at a budget inside the data
    assert fit.law().n_exponent == pytest.approx(TRUE.n_exponent, abs=0.02)
    assert fit.law().optimum(1e18)[0] == pytest.approx(TRUE.optimum(1e18)[0], rel=0.25)


def test_fit_is_exact_without_noise_and_approach2_finds_the_exponent():
    n, d, c, loss = synthetic_runs(TRUE, noise=0.0)
    fit = fit_approach3(n, d, loss)
    assert fit.alpha == pytest.approx(TRUE.alpha, rel=1e-3) and fit.beta == pytest.approx(TRUE.beta, rel=1e-3)
    assert fit.A == pytest.approx(TRUE.A, rel=0.02) and fit.B == pytest.approx(TRUE.B, rel=0.02)
    a2 = fit_approach2(n, c, loss)
    assert a2["usable_budgets"] == 6
    assert a2["a"] == pytest.approx(TRUE.n_exponent, abs=0.02)


def test_bootstrap_intervals_cover_the_estimate():
    n, d, c, loss = synthetic_runs(TRUE, noise=0.005, seed=3)
    fit = bootstrap(fit_approach3(n, d, loss), n, d, loss, samples=40, seed=1)
    for k in ("E", "alpha", "beta"):
        ci = fit.intervals[k]
        assert ci["se"] > 0 and ci["lo"] <= getattr(fit, k) <= ci["hi"]
    assert fit.intervals["alpha"]["lo"] - 0.05 < TRUE.alpha < fit.intervals["alpha"]["hi"] + 0.05


def test_chinchilla_points_reproduce_epochs_estimates():
    runs = read_results(CHINCHILLA)
    assert len(runs) == 245 and runs.tokens[0] == pytest.approx(runs.flops[0] / (6 * runs.params[0]))
    runs = runs.drop_highest(5)
    fit = fit_approach3(runs.params, runs.tokens, runs.loss)
    assert fit.seconds < 30
    # Epoch AI (arXiv 2404.10102), within their standard errors
    assert abs(fit.E - 1.8172) < 0.026
    assert abs(fit.alpha - 0.3478) < 0.015
    assert abs(fit.beta - 0.3658) < 0.021
    assert abs(fit.A - 482.01) < 124.5 and abs(fit.B - 2085.43) < 1293.3


def _write_csv(path: Path, header: str, rows: list[str]) -> Path:
    path.write_text(header + "\n" + "\n".join(rows) + "\n", encoding="utf-8")
    return path


def test_read_results_generic_columns_csv_and_json(tmp_path):
    rows = [f"{n},{20 * n},{3.0 - i * 0.1}" for i, n in enumerate([1e6, 2e6, 4e6, 8e6, 1.6e7])]
    r = read_results(_write_csv(tmp_path / "r.csv", "params,tokens,loss", rows + ["5e6,,3.0"]))
    assert len(r) == 5 and r.skipped == 1
    assert r.flops[0] == pytest.approx(6 * 1e6 * 2e7)
    runs = [{"params": n, "flops": 6 * n * 20 * n, "val_loss": 3.0} for n in [1e6, 2e6, 4e6, 8e6, 1.6e7]]
    (tmp_path / "r.json").write_text(json.dumps({"runs": runs}))
    r = read_results(tmp_path / "r.json")
    assert r.tokens[2] == pytest.approx(20 * 4e6)


@pytest.mark.parametrize("content, message", [
    ("params,tokens,loss\n1e6,2e7,3\n2e6,4e7,2.9\n", "usable runs"),
    ("params,tokens,loss\n1e6,2e7,3\n2e6,4e7,2.9\n3e6,0,2.8\n4e6,8e7,2.7\n5e6,1e8,2.6\n6e6,1e8,2.5\n",
     "must be positive"),
    ("params,tokens,loss\n1e6,2e7,-3\n2e6,4e7,2.9\n3e6,6e7,2.8\n4e6,8e7,2.7\n5e6,1e8,2.6\n", "must be positive"),
    ("size,loss\n1,2\n", "need columns"),
])
def test_read_results_rejects_bad_files(tmp_path, content, message):
    path = tmp_path / "bad.csv"
    path.write_text(content)
    with pytest.raises(UserError, match=message):
        read_results(path)


def test_read_results_missing_file_and_too_many_dropped(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        read_results(tmp_path / "nope.csv")
    rows = [f"{n},{20 * n},3" for n in [1e6, 2e6, 4e6, 8e6, 1.6e7, 3.2e7]]
    r = read_results(_write_csv(tmp_path / "r.csv", "params,tokens,loss", rows))
    with pytest.raises(UserError, match="fewer than 5"):
        r.drop_highest(2)


def test_load_law_names_files_and_errors(tmp_path):
    assert load_law("hoffmann").alpha == pytest.approx(0.33917084)
    good = tmp_path / "law.json"
    good.write_text(json.dumps({"E": 2.0, "A": 400, "B": 900, "alpha": 0.3, "beta": 0.35, "name": "mine"}))
    assert load_law(str(good)) == Law("mine", 2.0, 400.0, 900.0, 0.3, 0.35, str(good), "the runs fitted into law.json")
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(UserError, match="not valid JSON"):
        load_law(str(bad))
    bad.write_text(json.dumps({"E": 2.0, "A": 400}))
    with pytest.raises(UserError, match="needs numeric keys"):
        load_law(str(bad))
    bad.write_text(json.dumps({"E": 2.0, "A": -1, "B": 900, "alpha": 0.3, "beta": 0.35}))
    with pytest.raises(UserError, match="positive"):
        load_law(str(bad))
    with pytest.raises(UserError, match="unknown law 'epok'.*did you mean 'epoch'"):
        load_law("epok")


def test_sweep_results_group_by_their_recorded_budget(tmp_path):
    n, d, c, loss = synthetic_runs(TRUE, noise=0.0)
    # real runs miss their budget by a batch or so: grouping must follow the recorded budget, not the FLOPs
    jitter = np.random.default_rng(0).uniform(0.97, 1.03, len(c))
    lines = [f"{b},{a},{t * j},{6 * a * t * j},{e},runs/x{i}"
             for i, (a, t, b, e, j) in enumerate(zip(n, d, c, loss, jitter, strict=True))]
    r = read_results(_write_csv(tmp_path / "results.csv", "budget,params,tokens,flops,loss,run_dir", lines))
    assert r.budget is not None and len(np.unique(r.budget)) == 6
    a2 = fit_approach2(r.params, r.flops, r.loss, r.budget)
    assert a2["usable_budgets"] == 6 and a2["a"] == pytest.approx(TRUE.n_exponent, abs=0.03)


def test_a_fit_far_from_every_published_one_is_flagged(tmp_path, capsys):
    from homegpt.cli import main
    from homegpt.plan.fit import implausible

    n, d, c, loss = synthetic_runs(TRUE, noise=0.003)
    assert implausible(fit_approach3(n, d, loss)) == []  # a law like the published ones: no warning
    n, d, c, loss = synthetic_runs(Law("odd", 1.9, 2e39, 1200.0, 9.2, 0.38), noise=0.002)  # what a tiny sweep gave
    results = tmp_path / "runs.csv"
    results.write_text("params,tokens,loss\n" + "".join(f"{a},{b},{e}\n" for a, b, e in zip(n, d, loss, strict=True)))
    assert main(["fit", str(results)]) == 0
    out = capsys.readouterr().out
    assert "warning: alpha = 9.2, far from published fits" in out and "A = 2.04e+39, far above" in out, out
