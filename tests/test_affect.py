"""Valence/arousal: metrics against hand-computed values, heads and losses through conformance,
and the recipe rules of the affect tasks."""

from __future__ import annotations

import pytest
import torch

from fer_core.affect_eval import SignAgreement, affect_collection, affect_result
from fer_core.builtin.affect_losses import CCCLoss, concordance
from fer_core.errors import FerError, RecipeError
from fer_core.outputs import TASK_OUTPUTS, layout, metric_mode, split, task_metrics
from fer_core.plugins import get_registry
from fer_core.recipe import load_recipe
from fer_core.registry import Component, Registry
from fer_core.testing import ConformanceError, check_head, check_loss

# x = 1..4 against y = 2, 2, 3, 5: means 2.5 and 3; sums of squares 5 and 6; co-sum 5
X, Y = [1.0, 2.0, 3.0, 4.0], [2.0, 2.0, 3.0, 5.0]


def test_concordance_by_hand():
    # population moments (Lin 1989): 2 * 1.25 / (1.25 + 1.5 + 0.25) = 5/6
    got = concordance(torch.tensor(X)[:, None], torch.tensor(Y)[:, None])
    assert got.item() == pytest.approx(5 / 6, abs=1e-7)  # eps 1e-8 in the denominator
    assert CCCLoss()(torch.tensor([X, X]).T, torch.tensor([Y, Y]).T).item() == pytest.approx(1 / 6, abs=1e-6)


def test_metrics_by_hand():
    pred = torch.tensor([X, [0.5, -0.2, 0.1, -0.4]]).T  # valence = X, arousal signs + - + -
    true = torch.tensor([Y, [0.3, 0.1, 0.2, -0.9]]).T  # arousal signs + + + -
    metrics = affect_collection()
    metrics.update(pred[:2], true[:2])  # two updates: the states must add up
    metrics.update(pred[2:], true[2:])
    result = affect_result(metrics.compute())
    # torchmetrics uses sample moments: 2 * (5/3) / (5/3 + 2 + 1/4) = 40/47
    assert result["valence_ccc"] == pytest.approx(40 / 47, abs=1e-5)
    assert result["valence_pcc"] == pytest.approx(5 / (5 * 6) ** 0.5, abs=1e-5)
    assert result["valence_rmse"] == pytest.approx(((1 + 0 + 0 + 1) / 4) ** 0.5, abs=1e-6)
    assert result["valence_sagr"] == 1.0
    assert result["arousal_sagr"] == pytest.approx(0.75)
    assert result["ccc_mean"] == pytest.approx((result["valence_ccc"] + result["arousal_ccc"]) / 2)
    assert result["affect"]["arousal"]["sagr"] == result["arousal_sagr"]


def test_sign_agreement_counts_zero_only_with_zero():
    metric = SignAgreement(2)
    metric.update(torch.tensor([[0.0, 0.2], [0.1, -0.3]]), torch.tensor([[0.0, -0.2], [0.0, -0.1]]))
    assert metric.compute().tolist() == [0.5, 0.5]


def test_outputs_split_and_metrics_per_task():
    out = torch.arange(18.0).reshape(2, 9)
    parts = split(out, {"logits": 7, "va": 2})
    assert parts["logits"].shape == (2, 7) and parts["va"].tolist() == [[7.0, 8.0], [16.0, 17.0]]
    with pytest.raises(ValueError, match="add up to 8"):
        split(out, {"logits": 6, "va": 2})
    assert "ccc_mean" in task_metrics("affect") and "accuracy" not in task_metrics("affect")
    assert {"accuracy", "ccc_mean", "loss"} <= set(task_metrics("expression+affect"))
    assert metric_mode("valence_rmse") == "min" and metric_mode("ccc_mean") == "max"
    assert TASK_OUTPUTS["expression+affect"] == ("logits", "va")


@pytest.mark.parametrize("name,params", [("va", {}), ("multitask", {}), ("multitask", {"hidden": 8})])
def test_affect_heads_pass_conformance(name, params):
    report = check_head(name, params, num_classes=7)  # raises ConformanceError on a failure
    assert report.passed
    head = get_registry().build("head", {"name": name, **params}, "model.head", {"num_features": 16, "num_classes": 7})
    slices = layout(head)
    assert slices == ({"va": 2} if name == "va" else {"logits": 7, "va": 2})
    va = split(head(torch.randn(64, 16) * 100), slices)["va"]
    assert va.abs().max() <= 1  # tanh-bounded even for huge features


@pytest.mark.parametrize("name", ["ccc", "mse", "ccc_mse"])
def test_affect_losses_pass_conformance(name):
    assert check_loss(name).passed  # raises ConformanceError on a failure


class Unbounded(torch.nn.Module):
    outputs = {"va": 2}

    def __init__(self, num_features: int, num_classes: int):
        super().__init__()
        self.num_classes, self.fc = num_classes, torch.nn.Linear(num_features, 2)

    def forward(self, x):
        return self.fc(x) * 100


def unbounded(num_features: int, num_classes: int) -> Unbounded:
    return Unbounded(num_features, num_classes)


def test_conformance_catches_an_unbounded_va_head():
    registry = Registry()
    registry.add(Component("head", "unbounded", unbounded, plugin="test"))
    with pytest.raises(ConformanceError, match=r"valence/arousal up to .* they lie in \[-1, 1\]"):
        check_head("unbounded", registry=registry)


@pytest.mark.parametrize("overrides,message", [
    (["model.head.name=linear"], "task affect needs va; use head va"),
    (["affect.loss.name=cross_entropy"], "scores class logits, not valence/arousal"),
    (["eval.metric=accuracy"], "task affect does not compute accuracy"),
    (["augment.batch=[{name: mixup}]"], "cannot mix valence/arousal"),
])
def test_affect_recipe_errors_are_one_line(overrides, message, tmp_path):
    from fer_core.preflight import check_recipe

    with pytest.raises(FerError) as info:
        recipe = load_recipe("affect-synth", overrides, registry=get_registry())
        check_recipe(recipe, get_registry())
    assert message in str(info.value) and "\n" not in str(info.value)


def test_classification_recipes_refuse_affect_keys():
    with pytest.raises(RecipeError, match="does not compute ccc_mean"):
        load_recipe("quickstart", ["eval.metric=ccc_mean"])
    with pytest.raises(RecipeError, match="affect: only tasks affect and expression"):
        load_recipe("quickstart", ["affect.weight=2"])


def test_affect_defaults():
    affect = load_recipe("affect-synth")
    assert affect["eval"]["metric"] == "ccc_mean" and affect["affect"]["loss"]["name"] == "ccc_mse"
    multitask = load_recipe("multitask-synth")
    assert multitask["eval"]["metric"] == "accuracy" and multitask["model"]["head"]["name"] == "multitask"
