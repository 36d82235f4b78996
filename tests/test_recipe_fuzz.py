"""Seeded fuzzing of the shipped recipes: every mutation is accepted (exit 0) or refused with one short
line (exit 2), never a traceback or an internal error, in bounded time and memory; and what the check
accepts, a one-batch `fer run` accepts too.

Runs in-process (CliRunner), a few hundred recipes in seconds.
"""

from __future__ import annotations

import copy
import random
import resource
import time
from pathlib import Path
from typing import Any

import pytest
import yaml
from click.testing import CliRunner

from fer_core.cli import main
from fer_core.data.pack import make_synth_dataset
from fer_core.recipe import load_chain
from fer_core.constraints import OneOf, Range
from fer_core.schema import MISSING, SCHEMA, Key, Section, rule_at

ROOT = Path(__file__).resolve().parents[1]
RECIPES = sorted((ROOT / "fer_core" / "recipes").glob("*.yaml"))
VALUES: list[Any] = [0, 1, 2, 7, -1, -3, 0.5, 3.5, 1e-4, -1e308, 1e308, float("nan"), float("inf"), 2**80, "", "x",
                     "flip", "loss", None, True, False, [], {}, [0.9], [1, 2], [0.9, 1.5], {"name": "nope"},
                     {"name": "linear"}, "a" * 400, [[1] * 40] * 40, "../../etc", "cuda:99"]
PARAMS = ("dropout", "label_smoothing", "p", "model", "size", "scale", "hidden", "freeze", "gamma", "depth",
          "checkpoint", "pretrained_file", "class_weights")
N_MUTATIONS = 300


def schema_paths(rules=SCHEMA, prefix=()) -> list[tuple[str, ...]]:
    out = []
    for key, rule in rules.items():
        out.append((*prefix, key))
        if isinstance(rule, Section):
            out += schema_paths(rule.keys, (*prefix, key))
    return out


PATHS = schema_paths() + [("model", part, param) for part in ("encoder", "backbone", "head") for param in PARAMS] \
    + [("loss", param) for param in PARAMS] + [("nonsense",), ("train", "epoch"), ("model", "neck")]


def valid_value(rule: Any, rng: random.Random) -> Any:
    """A value the schema allows, often at the edge of its range; MISSING when there is no simple one."""
    if not isinstance(rule, Key):
        return MISSING
    if isinstance(rule.constraint, OneOf):
        return rng.choice(rule.constraint.choices)
    if rule.types == (bool,):
        return rng.choice([True, False])
    candidates = [rule.default] if rule.default is not MISSING else []
    if isinstance(rule.constraint, Range) and rule.types in ((int,), (float,)):
        lo, hi = rule.constraint.lo, rule.constraint.hi
        candidates += [lo, hi]  # an open bound is dropped below
        if rule.types == (float,) and lo is not None and hi is not None:
            candidates.append((lo + hi) / 2)
    candidates = [c for c in candidates
                  if c is not None and (rule.constraint is None or rule.constraint.problem(c) is None)]
    return rng.choice(candidates) if candidates else MISSING


def mutate(recipe: dict, rng: random.Random) -> tuple[dict, str]:
    recipe = copy.deepcopy(recipe)
    path = rng.choice(PATHS)
    node = recipe
    for key in path[:-1]:
        child = node.get(key)
        if not isinstance(child, dict):
            child = node[key] = {}
        node = child
    if rng.random() < 0.15 and path[-1] in node:
        del node[path[-1]]
        return recipe, f"del {'.'.join(path)}"
    value = valid_value(rule_at(path), rng) if rng.random() < 0.5 else MISSING
    if value is MISSING:
        value = copy.deepcopy(rng.choice(VALUES))
    node[path[-1]] = value
    return recipe, f"{'.'.join(path)}={str(value)[:40]}"


def check_outcome(result, what: str) -> None:
    assert result.exit_code in (0, 2), (what, result.output)
    assert "Traceback" not in result.output and "internal error" not in result.output, (what, result.output)
    if result.exit_code == 2:
        assert result.stderr.count("\n") == 1, (what, result.stderr)
        assert len(result.stderr) <= 300 + len("error: \n"), (what, result.stderr)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    return make_synth_dataset(tmp_path_factory.mktemp("fuzz") / "data", n=70, size=24, seed=0, progress=False)


def test_mutated_shipped_recipes_are_accepted_or_refused_in_one_line(tmp_path):
    rng = random.Random(17)
    bases = [load_chain(path) for path in RECIPES]
    runner = CliRunner()
    for path in RECIPES:  # imports every plugin's factories once, outside the timed checks
        runner.invoke(main, ["recipe", "check", "--no-build", str(path)])
    before, outcomes = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, {0: 0, 2: 0}
    for i in range(N_MUTATIONS):
        recipe, what = mutate(rng.choice(bases), rng)
        path = tmp_path / f"m{i}.yaml"
        path.write_text(yaml.safe_dump(recipe))
        started = time.perf_counter()
        result = runner.invoke(main, ["recipe", "check", "--no-build", str(path)])
        assert time.perf_counter() - started < 10, what
        check_outcome(result, what)
        outcomes[result.exit_code] += 1
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 500_000  # KiB
    assert outcomes[0] > 20 and outcomes[2] > 100  # the mutations reach both sides


def quickstart_on(tiny: Path) -> dict:
    recipe = load_chain(ROOT / "fer_core" / "recipes" / "quickstart.yaml")
    recipe["data"] = {**recipe["data"], "root": str(tiny), "image_size": 24, "num_workers": 0}
    del recipe["data"]["synth"]
    recipe["train"] = {**recipe["train"], "epochs": 1}
    return recipe


def test_what_the_full_check_accepts_a_one_batch_run_accepts(tiny, tmp_path, one_thread):
    rng, runner = random.Random(23), CliRunner()
    base, accepted = quickstart_on(tiny), []
    for i in range(24):
        recipe, what = mutate(base, rng)
        data = recipe.get("data")
        if isinstance(data, dict) and isinstance(data.get("image_size"), int) and data["image_size"] > 64:
            data["image_size"] = 24  # keep the dry build small; the schema phase covers big sizes
        path = tmp_path / f"q{i}.yaml"
        path.write_text(yaml.safe_dump(recipe))
        started = time.perf_counter()
        result = runner.invoke(main, ["recipe", "check", str(path)])
        assert time.perf_counter() - started < 20, what
        check_outcome(result, what)
        if result.exit_code == 0:
            accepted.append((path, recipe, what))
    assert len(accepted) >= 4
    for path, recipe, what in random.Random(5).sample(accepted, 2):
        recipe["data"]["num_workers"] = 0
        recipe["train"] = {**recipe.get("train", {}), "epochs": 1}
        path.write_text(yaml.safe_dump(recipe))
        result = runner.invoke(main, ["run", str(path), "--out", str(tmp_path / "runs")])
        assert result.exit_code == 0, (what, result.output[-2000:])
