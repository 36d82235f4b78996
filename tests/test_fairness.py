"""Per-group metrics and the interval of the largest gap between groups."""

import numpy as np
import pytest
import torch

from fer_core.fairness import fairness_markdown, group_report

CLASSES = ["a", "b", "c"]


def test_group_metrics_match_hand_computed_values():
    #            group x: 4 samples       group y: 2    no value
    targets = [0, 0, 1, 2, 0, 1, 2]
    predicted = [0, 1, 1, 2, 2, 1, 0]
    groups = ["x", "x", "x", "x", "y", "y", None]
    report = group_report(torch.tensor(predicted), torch.tensor(targets), groups, CLASSES, ["y", "x"], min_support=1)
    y, x = report["groups"]  # the attribute's order
    assert (x["group"], x["support"], x["accuracy"]) == ("x", 4, 0.75)
    # class a: P 1, R 1/2, F1 2/3; class b: P 1/2, R 1, F1 2/3; class c: F1 1
    assert x["f1_macro"] == pytest.approx((2 / 3 + 2 / 3 + 1) / 3)
    assert x["confusion"] == [[1, 1, 0], [0, 1, 0], [0, 0, 1]]
    assert x["top_confusions"] == [{"true": "a", "predicted": "b", "count": 1, "share": 0.5}]
    # group y: a -> c wrong, b right; F1: a 0, b 1, c 0 (predicted once, never true)
    assert (y["support"], y["accuracy"]) == (2, 0.5)
    assert y["f1_macro"] == pytest.approx(1 / 3)
    assert report["missing"] == 1
    assert report["worst"] == {"group": "y", "accuracy": 0.5}
    gap = report["gap"]
    assert (gap["best"], gap["worst"], gap["value"]) == ("x", "y", 0.25)
    low, high = gap["interval"]
    assert low < 0.25 < high and gap["excludes_zero"] is False
    lines = "\n".join(fairness_markdown({"letters": report}))
    assert "## By letters" in lines and "| x | 4 | 0.750" in lines and "1 samples have no letters" in lines


def simulated(rates, n, seed):
    """Predictions of a 2-class problem that are right with each group's rate."""
    rng = np.random.default_rng(seed)
    targets, predicted, groups = [], [], []
    for g, rate in enumerate(rates):
        truth = rng.integers(0, 2, n)
        right = rng.random(n) < rate
        targets += truth.tolist()
        predicted += np.where(right, truth, 1 - truth).tolist()
        groups += [f"g{g}"] * n
    return torch.tensor(predicted), torch.tensor(targets), groups


def test_the_gap_interval_holds_zero_for_equal_groups_despite_picking_best_and_worst():
    # seven groups of equal accuracy: the measured best-minus-worst is always positive, and a plain
    # interval around it would exclude zero about half the time; the simultaneous one rarely does
    excluded = 0
    for seed in range(150):
        predicted, targets, groups = simulated([0.8] * 7, 80, seed)
        report = group_report(predicted, targets, groups, ["a", "b"], resamples=500, seed=seed)
        assert report["gap"]["value"] > 0
        excluded += report["gap"]["excludes_zero"]
    assert excluded <= 12  # 5 % of 150 is 7.5


def test_the_gap_interval_excludes_zero_for_a_clearly_worse_group():
    for seed in range(10):
        predicted, targets, groups = simulated([0.9] * 6 + [0.7], 200, seed)
        report = group_report(predicted, targets, groups, ["a", "b"], resamples=500, seed=seed)
        assert report["gap"]["worst"] == "g6" and report["gap"]["excludes_zero"], report["gap"]
        assert report["worst"]["group"] == "g6"


def test_resampling_is_seeded_and_small_groups_stay_out_of_the_gap():
    predicted, targets, groups = simulated([0.9, 0.6, 0.2], 40, 0)
    groups = groups[:80] + groups[80:85] + [None] * 35  # g2 keeps 5 samples
    first = group_report(predicted, targets, groups, ["a", "b"], seed=3)
    again = group_report(predicted, targets, groups, ["a", "b"], seed=3)
    assert first == again
    assert [row["group"] for row in first["groups"]] == ["g0", "g1", "g2"]
    assert (first["gap"]["best"], first["gap"]["worst"]) == ("g0", "g1")  # g2 has fewer than 10 samples
    assert first["worst"]["group"] == "g1"
    single = group_report(predicted, targets, groups, ["a", "b"], min_support=41)
    assert "gap" not in single and "worst" not in single
    assert "no gap is reported" in "\n".join(fairness_markdown({"g": single}))
