"""Every sweep file validates against the sweep configuration schema of wandb's own ``sweeps`` package.

``tests/data/wandb_sweep_config_schema.json`` is ``src/sweeps/config/schema.json`` of
https://github.com/wandb/sweeps (MIT License, Copyright (c) 2021 Weights and Biases; commit
b1dfc5f95e7fa179519718e92371d1423c116893), the JSON schema the W&B server checks sweep configs
against. The installed ``wandb`` client (0.2x/0.3x) does not ship it (the server validates), and no
JSON-schema library is a dependency, so :func:`violations` below checks the draft-07 keywords that
schema uses (a check of a keyword it does not know fails the test instead of passing silently).
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
SCHEMA = json.loads((ROOT / "tests" / "data" / "wandb_sweep_config_schema.json").read_text())
SWEEPS = sorted((ROOT / "recipes" / "sweeps").glob("*.yaml"))
_ANNOTATIONS = {"$schema", "$id", "title", "description", "default", "format", "definitions"}
_TYPES = {
    "object": lambda v: isinstance(v, dict),
    "array": lambda v: isinstance(v, list),
    "string": lambda v: isinstance(v, str),
    "integer": lambda v: isinstance(v, int) and not isinstance(v, bool),
    "number": lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
    "boolean": lambda v: isinstance(v, bool),
}


def _resolve(ref: str) -> dict[str, Any]:
    node: Any = SCHEMA
    for part in ref.removeprefix("#/").split("/"):
        node = node[part]
    return node


def violations(value: Any, schema: dict[str, Any], where: str = "$") -> list[str]:
    """Where ``value`` breaks ``schema`` (draft-07 subset), as readable lines; empty when it validates."""
    out: list[str] = []
    for key, rule in schema.items():
        if key in _ANNOTATIONS:
            continue
        if key == "$ref":
            out += violations(value, _resolve(rule), where)
        elif key == "type":
            if not _TYPES[rule](value):
                out.append(f"{where}: expected {rule}, got {type(value).__name__}")
        elif key == "enum":
            if value not in rule:
                out.append(f"{where}: {value!r} not one of {rule}")
        elif key in ("anyOf", "oneOf"):
            passing = [s for s in rule if not violations(value, s, where)]
            if not passing or (key == "oneOf" and len(passing) != 1):
                out.append(f"{where}: matches {len(passing)} of the {key} alternatives")
        elif not isinstance(value, (dict, list, int, float)) or isinstance(value, bool):
            continue  # the keywords below constrain objects, arrays and numbers only
        elif key == "required":
            out += [f"{where}: missing {k!r}" for k in rule if isinstance(value, dict) and k not in value]
        elif key == "properties":
            if isinstance(value, dict):
                for name, sub in rule.items():
                    if name in value:
                        out += violations(value[name], sub, f"{where}.{name}")
        elif key == "additionalProperties":
            if isinstance(value, dict):
                extra = [k for k in value if k not in schema.get("properties", {})]
                if rule is False:
                    out += [f"{where}: unexpected key {k!r}" for k in extra]
                else:
                    for k in extra:
                        out += violations(value[k], rule, f"{where}.{k}")
        elif key == "propertyNames":
            if isinstance(value, dict):
                out += [f"{where}: bad key {k!r}" for k in value if not re.search(rule["pattern"], k)]
        elif key == "minProperties":
            if isinstance(value, dict) and len(value) < rule:
                out.append(f"{where}: fewer than {rule} keys")
        elif key == "minItems":
            if isinstance(value, list) and len(value) < rule:
                out.append(f"{where}: fewer than {rule} items")
        elif key == "items":
            if isinstance(value, list):
                for i, item in enumerate(value):
                    out += violations(item, rule, f"{where}[{i}]")
        elif key == "minimum":
            if isinstance(value, (int, float)) and value < rule:
                out.append(f"{where}: {value} < {rule}")
        elif key == "exclusiveMinimum":
            if isinstance(value, (int, float)) and value <= rule:
                out.append(f"{where}: {value} <= {rule}")
        elif key == "dependencies":
            if isinstance(value, dict):
                for name, needed in rule.items():
                    if name in value:
                        out += [f"{where}: {name!r} needs {n!r}" for n in needed if n not in value]
        else:
            raise AssertionError(f"schema keyword {key!r} is not checked by this test; extend violations()")
    return out


@pytest.mark.parametrize("path", SWEEPS, ids=[p.name for p in SWEEPS])
def test_sweep_file_validates_against_the_wandb_sweep_schema(path: Path) -> None:
    sweep = yaml.safe_load(path.read_text())
    assert violations(sweep, SCHEMA) == []


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (lambda s: s.update(method="bayesian"), "$.method: 'bayesian' not one of"),
        (lambda s: s["metric"].update(goal="max"), "$.metric.goal"),
        (lambda s: s.update(parameter=s.pop("parameters")), "unexpected key 'parameter'"),
        (lambda s: s["early_terminate"].update(min_iter=0), "alternatives"),
        (lambda s: next(iter(s["parameters"].values())).update(distribution="loguniform"), "parameters."),
    ],
)
def test_the_schema_check_catches_broken_sweeps(change, expected: str) -> None:
    sweep = yaml.safe_load(SWEEPS[0].read_text())
    change(sweep)
    assert any(expected in line for line in violations(sweep, SCHEMA)), violations(sweep, SCHEMA)
