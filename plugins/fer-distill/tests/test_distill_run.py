"""`fer run` of a distilled student end to end, and the plugin's registration."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from fer_core.plugins import PluginHost
from fer_core.testing import check_plugin
from fer_core.train import run

sys.path.insert(0, str(Path(__file__).parent))
from distill_helpers import load, recipe_text  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")


def test_plugin_registers_the_loss_and_loads_cheaply():
    host = PluginHost(env={"FER_PLUGINS": "distill"})
    assert [p.status for p in host.plugins if p.dist == "fer-distill"] == ["loaded"]
    assert "distill" in host.registry.names("loss")
    check_plugin("fer-distill")


def test_a_distilled_student_trains_with_a_cached_teacher_and_learns(tmp_path, synth, teacher_run, capsys):
    loss = f"{{name: distill, teacher: '{teacher_run}', temperature: 4.0, alpha: 0.7}}"
    recipe = load(tmp_path, recipe_text(synth, name="student", loss=loss, epochs=4))
    run_dir = run(recipe, out=str(tmp_path / "runs"))
    out = capsys.readouterr().out
    assert "not cached" not in out  # no augments: the teacher's logits were cached
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["test"]["accuracy"] > 0.35, summary  # chance is 1/7
