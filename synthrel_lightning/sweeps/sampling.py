"""Parameter choices of a sweep, drawn as wandb's sweep controller defines them.

Definitions from wandb's ``sweeps`` package (https://github.com/wandb/sweeps, ``src/sweeps/params.py``,
``grid_search.py``, ``random_search.py``, MIT License):

- parameters are taken in sorted name order;
- ``grid``: the cartesian product of the parameters' values (first sorted name varies slowest);
  ``int_uniform`` gives ``min..max`` inclusive, ``q_uniform`` gives ``arange(min, max, q)``; other
  distributions are not allowed in a grid;
- ``random``: each parameter drawn from its distribution. ``log_uniform_values`` is uniform in
  ``log(value)`` between ``log(min)`` and ``log(max)``; ``log_uniform`` takes ``min``/``max`` already
  as natural logs; ``inv_log_uniform`` is ``exp(-u)`` with ``u`` uniform in ``[min, max]``,
  ``inv_log_uniform_values`` the same with ``u`` in ``[-log(max), -log(min)]``; ``q_*`` rounds to a
  multiple of ``q`` (an integer when ``q`` is one); ``int_uniform`` is inclusive of ``max``; a
  parameter without ``distribution`` is ``categorical`` (``values``), ``constant`` (``value``),
  ``int_uniform`` (integer ``min``/``max``) or ``uniform``.

Each trial draws from its own generator seeded by ``(seed, trial index)``, so trial ``i`` has the same
parameters whatever the number of trials asked for, and a rerun (resume) sees the same plan.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

__all__ = ["DISTRIBUTIONS", "GRID_DISTRIBUTIONS", "distribution_of", "grid_points", "plan_trials", "sample"]

_Sampler = Callable[[np.random.Generator, Mapping[str, Any]], Any]


def _quantise(x: float, q: float) -> float | int:
    value = round(x / q) * q
    return int(value) if isinstance(q, int) else float(value)


def _uniform(rng: np.random.Generator, lo: float, hi: float) -> float:
    return float(lo + (hi - lo) * rng.random())


def _categorical(rng: np.random.Generator, c: Mapping[str, Any]) -> Any:
    return c["values"][int(rng.integers(len(c["values"])))]


def _weighted(rng: np.random.Generator, c: Mapping[str, Any]) -> Any:
    return c["values"][int(rng.choice(len(c["values"]), p=np.asarray(c["probabilities"], dtype=float)))]


def _log_uniform_values(rng: np.random.Generator, c: Mapping[str, Any]) -> float:
    return math.exp(_uniform(rng, math.log(c["min"]), math.log(c["max"])))


def _inv_log_uniform(lo: float, hi: float) -> _Sampler:
    return lambda rng, c: math.exp(-_uniform(rng, lo, hi))


# (required keys, optional keys with wandb's defaults, sampler)
DISTRIBUTIONS: dict[str, tuple[tuple[str, ...], dict[str, Any], _Sampler]] = {
    "constant": (("value",), {}, lambda rng, c: c["value"]),
    "categorical": (("values",), {}, _categorical),
    "categorical_w_probabilities": (("values", "probabilities"), {}, _weighted),
    "int_uniform": (("min", "max"), {}, lambda rng, c: int(rng.integers(c["min"], c["max"] + 1))),
    "uniform": (("min", "max"), {}, lambda rng, c: _uniform(rng, c["min"], c["max"])),
    "q_uniform": (("min", "max"), {"q": 1.0}, lambda rng, c: _quantise(_uniform(rng, c["min"], c["max"]), c["q"])),
    "log_uniform": (("min", "max"), {}, lambda rng, c: math.exp(_uniform(rng, c["min"], c["max"]))),
    "log_uniform_values": (("min", "max"), {}, _log_uniform_values),
    "q_log_uniform": (
        ("min", "max"),
        {"q": 1.0},
        lambda rng, c: _quantise(math.exp(_uniform(rng, c["min"], c["max"])), c["q"]),
    ),
    "q_log_uniform_values": (("min", "max"), {"q": 1.0}, lambda rng, c: _quantise(_log_uniform_values(rng, c), c["q"])),
    "inv_log_uniform": (("min", "max"), {}, lambda rng, c: _inv_log_uniform(c["min"], c["max"])(rng, c)),
    "inv_log_uniform_values": (
        ("min", "max"),
        {},
        lambda rng, c: _inv_log_uniform(-math.log(c["max"]), -math.log(c["min"]))(rng, c),
    ),
    "normal": ((), {"mu": 0.0, "sigma": 1.0}, lambda rng, c: float(rng.normal(c["mu"], c["sigma"]))),
    "q_normal": (
        (),
        {"mu": 0.0, "sigma": 1.0, "q": 1.0},
        lambda rng, c: _quantise(float(rng.normal(c["mu"], c["sigma"])), c["q"]),
    ),
    "log_normal": ((), {"mu": 0.0, "sigma": 1.0}, lambda rng, c: math.exp(rng.normal(c["mu"], c["sigma"]))),
    "q_log_normal": (
        (),
        {"mu": 0.0, "sigma": 1.0, "q": 1.0},
        lambda rng, c: _quantise(math.exp(rng.normal(c["mu"], c["sigma"])), c["q"]),
    ),
    "beta": ((), {"a": 1.0, "b": 1.0}, lambda rng, c: float(rng.beta(c["a"], c["b"]))),
    "q_beta": ((), {"a": 1.0, "b": 1.0, "q": 1.0}, lambda rng, c: _quantise(float(rng.beta(c["a"], c["b"])), c["q"])),
}
"""Every distribution of wandb's sweep schema: required keys, optional keys (defaults) and how it is drawn."""

GRID_DISTRIBUTIONS = ("constant", "categorical", "int_uniform", "q_uniform")
"""The distributions a grid accepts (wandb's ``grid_search_next_runs``)."""


def _is_int(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _is_number(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)


def distribution_of(name: str, spec: Mapping[str, Any]) -> tuple[str, dict[str, Any]]:
    """``(distribution, settings with defaults)`` of parameter ``name``; a bad specification raises ``ValueError``."""
    if "parameters" in spec:
        raise ValueError(
            f"parameter {name!r}: nested parameters are not supported here; "
            "use flat dotted names (model.init_args.x), which the CLI reads as --model.init_args.x=value"
        )
    kind = spec.get("distribution")
    if kind is None:
        if "values" in spec:
            kind = "categorical_w_probabilities" if "probabilities" in spec else "categorical"
        elif "value" in spec:
            kind = "constant"
        elif "min" in spec and "max" in spec:
            kind = "int_uniform" if _is_int(spec["min"]) and _is_int(spec["max"]) else "uniform"
        else:
            raise ValueError(f"parameter {name!r}: give values, value, or min and max (with a distribution)")
    if kind not in DISTRIBUTIONS:
        raise ValueError(
            f"parameter {name!r}: unknown distribution {kind!r}; valid distributions: {', '.join(DISTRIBUTIONS)}"
        )
    required, optional, _ = DISTRIBUTIONS[kind]
    missing = [k for k in required if k not in spec]
    extra = sorted(set(spec) - set(required) - set(optional) - {"distribution"})
    if missing or extra:
        wrong = (f"needs {', '.join(missing)}" if missing else "") + (
            f"{'; ' if missing else ''}does not take {', '.join(extra)}" if extra else ""
        )
        raise ValueError(f"parameter {name!r} ({kind}): {wrong}")
    settings = {**optional, **{k: v for k, v in spec.items() if k != "distribution"}}
    _check(name, kind, settings)
    return kind, settings


def _check(name: str, kind: str, c: Mapping[str, Any]) -> None:
    where = f"parameter {name!r} ({kind})"
    if kind.startswith("categorical"):
        if not isinstance(c["values"], list) or not c["values"]:
            raise ValueError(f"{where}: values must be a non-empty list")
        if kind == "categorical_w_probabilities":
            p = c["probabilities"]
            if not isinstance(p, list) or len(p) != len(c["values"]) or not all(_is_number(x) and x >= 0 for x in p):
                raise ValueError(f"{where}: probabilities must be one non-negative number per value")
            if not math.isclose(sum(p), 1.0, abs_tol=1e-6):
                raise ValueError(f"{where}: probabilities sum to {sum(p)}, not 1")
    numbers = [k for k in ("min", "max", "q", "mu", "sigma", "a", "b") if k in c]
    if any(not _is_number(c[k]) for k in numbers):
        raise ValueError(f"{where}: {', '.join(numbers)} must be numbers")
    if kind == "int_uniform" and not (_is_int(c["min"]) and _is_int(c["max"])):
        raise ValueError(f"{where}: min and max must be integers")
    if "min" in c and c["min"] > c["max"]:
        raise ValueError(f"{where}: min {c['min']} is above max {c['max']}")
    if kind.endswith("_values") and c["min"] <= 0:
        raise ValueError(f"{where}: min must be > 0 (the bounds are values, drawn uniformly in log space)")
    if c.get("q", 1) <= 0 or c.get("sigma", 1) < 0 or c.get("a", 1) < 0 or c.get("b", 1) < 0:
        raise ValueError(f"{where}: q must be > 0, sigma, a and b >= 0")


def sample(parameters: Mapping[str, Mapping[str, Any]], rng: np.random.Generator) -> dict[str, Any]:
    """One random draw of every parameter (sorted by name), as wandb's ``random`` method draws them."""
    out: dict[str, Any] = {}
    for name in sorted(parameters):
        kind, settings = distribution_of(name, parameters[name])
        out[name] = DISTRIBUTIONS[kind][2](rng, settings)
    return out


def grid_points(parameters: Mapping[str, Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Every point of the grid in wandb's order: the product over sorted names, the first varying slowest."""
    axes: list[tuple[str, list[Any]]] = []
    for name in sorted(parameters):
        kind, c = distribution_of(name, parameters[name])
        if kind not in GRID_DISTRIBUTIONS:
            raise ValueError(
                f"parameter {name!r} ({kind}): a grid takes only {', '.join(GRID_DISTRIBUTIONS)} parameters"
            )
        if kind == "constant":
            axes.append((name, [c["value"]]))
        elif kind == "categorical":
            axes.append((name, list(c["values"])))
        elif kind == "int_uniform":
            axes.append((name, list(range(c["min"], c["max"] + 1))))
        else:
            axes.append((name, np.arange(c["min"], c["max"], c["q"]).tolist()))
    names = [n for n, _ in axes]
    return [dict(zip(names, point)) for point in itertools.product(*(values for _, values in axes))]


def plan_trials(method: str, parameters: Mapping[str, Mapping[str, Any]], runs: int | None, seed: int) -> list[dict]:
    """The parameters of each trial: the grid's first ``runs`` points, or ``runs`` draws seeded by (seed, index).

    ``bayes`` is drawn as ``random`` (the Bayesian model lives in the W&B controller).
    """
    if method == "grid":
        points = grid_points(parameters)
        return points if runs is None else points[:runs]
    if runs is None:
        raise ValueError(f"a {method} sweep needs a number of trials (--runs N)")
    for name in sorted(parameters):
        distribution_of(name, parameters[name])
    return [sample(parameters, np.random.default_rng([seed, i])) for i in range(runs)]
