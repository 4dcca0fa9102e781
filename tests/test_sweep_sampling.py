"""Sweep parameter draws follow wandb's definitions; sweep command lines match wandb's agent but use this Python.

The expected values are written from wandb's ``sweeps`` package (https://github.com/wandb/sweeps,
``src/sweeps/params.py`` and ``grid_search.py``): parameters in sorted name order, the grid the
cartesian product with the first name varying slowest, ``int_uniform`` inclusive of ``max``,
``q_uniform`` in a grid ``arange(min, max, q)``, ``log_uniform_values`` uniform in log space.
"""

from __future__ import annotations

import math
import sys
from pathlib import Path

import numpy as np
import pytest

from synthrel_lightning.sweeps.sampling import DISTRIBUTIONS, grid_points, plan_trials
from synthrel_lightning.sweeps.spec import command_line, load_sweep, sweep_from_dict

ROOT = Path(__file__).resolve().parents[1]


def test_grid_is_the_product_over_sorted_names_first_varying_slowest() -> None:
    parameters = {
        "zeta": {"values": ["a", "b"]},
        "alpha": {"distribution": "int_uniform", "min": 1, "max": 2},
        "mid": {"value": 7},
        "beta": {"distribution": "q_uniform", "min": 0.0, "max": 1.0, "q": 0.5},
    }
    expected = [{"alpha": a, "beta": b, "mid": 7, "zeta": z} for a in (1, 2) for b in (0.0, 0.5) for z in ("a", "b")]
    points = grid_points(parameters)
    assert points == expected
    assert [list(p) for p in points] == [["alpha", "beta", "mid", "zeta"]] * len(expected)
    assert plan_trials("grid", parameters, 3, seed=0) == expected[:3]
    assert plan_trials("grid", parameters, None, seed=5) == expected


def test_grid_refuses_a_continuous_parameter_by_name() -> None:
    with pytest.raises(ValueError, match=r"'lr' \(log_uniform_values\): a grid takes only"):
        grid_points({"lr": {"distribution": "log_uniform_values", "min": 1e-4, "max": 1e-2}, "b": {"values": [1]}})


def _draws(spec: dict, n: int = 3000, seed: int = 0) -> list:
    return [t["p"] for t in plan_trials("random", {"p": spec}, n, seed)]


def test_uniform_and_int_uniform_stay_in_bounds_and_cover_them() -> None:
    uniform = np.array(_draws({"distribution": "uniform", "min": 0.2, "max": 0.9}))
    assert uniform.min() >= 0.2 and uniform.max() <= 0.9
    assert abs(uniform.mean() - 0.55) < 0.02 and uniform.min() < 0.21 and uniform.max() > 0.89
    ints = _draws({"distribution": "int_uniform", "min": 3, "max": 6})
    assert all(isinstance(v, int) for v in ints) and set(ints) == {3, 4, 5, 6}
    # min/max given as integers without a distribution: int_uniform (wandb's schema default)
    assert set(_draws({"min": 0, "max": 1}, n=200)) == {0, 1}
    floats = _draws({"min": 0.0, "max": 1.0}, n=200)
    assert all(isinstance(v, float) and 0 <= v <= 1 for v in floats) and len(set(floats)) == 200


def test_log_uniform_values_is_uniform_in_log_space() -> None:
    lo, hi = 5e-4, 2e-2
    draws = np.array(_draws({"distribution": "log_uniform_values", "min": lo, "max": hi}, n=4000))
    assert draws.min() >= lo and draws.max() <= hi
    u = (np.log(draws) - math.log(lo)) / (math.log(hi) - math.log(lo))
    # uniform on [0, 1] in log space: each quarter holds a quarter of the draws
    counts = np.histogram(u, bins=4, range=(0, 1))[0] / len(u)
    assert np.all(np.abs(counts - 0.25) < 0.03), counts
    # uniform in value space would put ~94% above the geometric midpoint; log-uniform puts half
    assert abs(np.mean(draws > math.sqrt(lo * hi)) - 0.5) < 0.03
    # log_uniform takes its bounds as natural logs
    logs = np.array(_draws({"distribution": "log_uniform", "min": math.log(lo), "max": math.log(hi)}, n=500))
    assert logs.min() >= lo * (1 - 1e-9) and logs.max() <= hi * (1 + 1e-9)
    inv = np.array(_draws({"distribution": "inv_log_uniform_values", "min": lo, "max": hi}, n=500))
    assert inv.min() >= lo * (1 - 1e-9) and inv.max() <= hi * (1 + 1e-9)


def test_quantised_categorical_and_normal_draws() -> None:
    q = _draws({"distribution": "q_uniform", "min": 0.0, "max": 10.0, "q": 2}, n=500)
    assert all(isinstance(v, int) and v % 2 == 0 and 0 <= v <= 10 for v in q)
    qlog = _draws({"distribution": "q_log_uniform_values", "min": 1.0, "max": 100.0, "q": 0.5}, n=500)
    assert all(abs(v / 0.5 - round(v / 0.5)) < 1e-9 and 1.0 <= v <= 100.0 for v in qlog)
    cats = _draws({"values": ["msp", "entropy", "max_logit"]}, n=600)
    assert {c: cats.count(c) for c in set(cats)}.keys() == {"msp", "entropy", "max_logit"}
    weighted = _draws({"values": ["a", "b"], "probabilities": [0.8, 0.2]}, n=4000)
    assert abs(weighted.count("a") / 4000 - 0.8) < 0.03
    normal = np.array(_draws({"distribution": "normal", "mu": 2.0, "sigma": 0.5}, n=4000))
    assert abs(normal.mean() - 2.0) < 0.05 and abs(normal.std() - 0.5) < 0.05
    assert _draws({"value": 0.3}, n=3) == [0.3, 0.3, 0.3]


def test_draws_are_reproducible_per_seed_and_trial() -> None:
    sweep = load_sweep(ROOT / "recipes" / "sweeps" / "demo.yaml")
    five = plan_trials("random", sweep.parameters, 5, seed=3)
    assert five == plan_trials("random", sweep.parameters, 5, seed=3)
    assert plan_trials("random", sweep.parameters, 2, seed=3) == five[:2]
    assert plan_trials("random", sweep.parameters, 5, seed=4) != five
    assert len({t["model.init_args.optimizer.init_args.lr"] for t in five}) == 5
    with pytest.raises(ValueError, match="needs a number of trials"):
        plan_trials("bayes", sweep.parameters, None, seed=0)


def test_an_unknown_distribution_is_refused_naming_the_parameter_and_the_valid_ones() -> None:
    bad = {"lr": {"distribution": "loguniform", "min": 0.1, "max": 1.0}}
    with pytest.raises(ValueError) as err:
        plan_trials("random", bad, 2, seed=0)
    assert "parameter 'lr'" in str(err.value) and "'loguniform'" in str(err.value)
    assert all(name in str(err.value) for name in DISTRIBUTIONS)
    with pytest.raises(ValueError, match=r"'lr' \(uniform\): does not take mu"):
        plan_trials("random", {"lr": {"distribution": "uniform", "min": 0, "max": 1, "mu": 3}}, 1, seed=0)
    with pytest.raises(ValueError, match=r"'lr' \(log_uniform_values\): min must be > 0"):
        plan_trials("random", {"lr": {"distribution": "log_uniform_values", "min": 0, "max": 1}}, 1, seed=0)
    with pytest.raises(ValueError, match="nested parameters"):
        plan_trials("random", {"model": {"parameters": {"lr": {"value": 1}}}}, 1, seed=0)


def test_every_sweep_file_plans_its_trials() -> None:
    for path in sorted((ROOT / "recipes" / "sweeps").glob("*.yaml")):
        sweep = load_sweep(path)
        trials = plan_trials(sweep.method, sweep.parameters, 3, seed=0)
        assert len(trials) == 3 and all(set(t) == set(sweep.parameters) for t in trials), path.name


def test_command_line_is_wandbs_with_this_interpreter() -> None:
    from wandb.sdk.launch.sweeps.utils import create_sweep_command_args

    sweep = load_sweep(ROOT / "recipes" / "sweeps" / "demo.yaml")
    params = plan_trials(sweep.method, sweep.parameters, 1, seed=0)[0]
    argv = command_line(sweep, params)
    # wandb's agent: ${env} -> /usr/bin/env (dropped here), ${interpreter} -> "python" (here: this Python)
    assert argv[:3] == [sys.executable, "-m", "synthrel_lightning"]
    assert argv[3:8] == ["fit", "--config", "demo", "--config", "callbacks/wandb.yaml"]
    assert argv[8:] == create_sweep_command_args({"args": {k: {"value": v} for k, v in params.items()}})["args"]
    assert command_line(sweep, params, interpreter="/opt/py/bin/python3")[0] == "/opt/py/bin/python3"
    env_sweep = sweep_from_dict({**sweep.raw, "command": ["${interpreter}", "${envvar:SWEEP_SCRIPT}", "${args}"]})
    assert command_line(env_sweep, {"a": 1}, environ={"SWEEP_SCRIPT": "train.py"}) == [
        sys.executable,
        "train.py",
        "--a=1",
    ]
    with pytest.raises(ValueError, match=r"\$\{args_json\} is not one this runner fills"):
        command_line(sweep_from_dict({**sweep.raw, "command": ["${interpreter}", "${args_json}"]}), params)
