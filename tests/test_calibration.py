"""Expected calibration error, reliability bins and temperature scaling."""

import json

import pytest
import torch
from torchmetrics.classification import MulticlassCalibrationError

from fer_core.calibration import (CALIBRATION_FILE, Reliability, calibration_record, fit_temperature,
                                  reliability_of, stored_temperature, write_calibration)
from fer_core.evaluate import metric_collection


def logits_of(probabilities):
    return torch.tensor(probabilities).log()


def test_ece_and_bins_match_a_hand_computed_example():
    # confidences 0.85 (right), 0.85 (wrong), 0.65 (right), 0.55 (wrong), 10 bins:
    # (0.8, 0.9]: 2 samples, confidence 0.85, accuracy 0.5 -> 2/4 * 0.35
    # (0.6, 0.7]: 1 sample, 0.65, right -> 1/4 * 0.35;  (0.5, 0.6]: 1 sample, 0.55, wrong -> 1/4 * 0.55
    logits = logits_of([[0.85, 0.15], [0.15, 0.85], [0.65, 0.35], [0.45, 0.55]])
    targets = torch.tensor([0, 0, 0, 0])
    bins = reliability_of(logits, targets, n_bins=10)
    assert bins["ece"] == pytest.approx(0.5 * 0.35 + 0.25 * 0.35 + 0.25 * 0.55)
    assert bins["count"] == [0, 0, 0, 0, 0, 1, 1, 0, 1 + 1, 0]
    assert bins["accuracy"][8] == 0.5 and bins["confidence"][8] == pytest.approx(0.85)
    assert bins["accuracy"][5] == 0.0 and bins["accuracy"][6] == 1.0 and bins["accuracy"][0] is None
    assert bins["edges"][:3] == [0.0, 0.1, 0.2] and len(bins["edges"]) == 11


def test_ece_equals_torchmetrics_calibration_error():
    generator = torch.Generator().manual_seed(0)
    logits = 3 * torch.randn(500, 7, generator=generator)
    targets = torch.randint(0, 7, (500,), generator=generator)
    expected = MulticlassCalibrationError(7, n_bins=15, norm="l1")(logits.softmax(1), targets).item()
    assert reliability_of(logits, targets)["ece"] == pytest.approx(expected, abs=1e-6)
    metric = Reliability()  # batches accumulate to the same bins
    for start in range(0, 500, 128):
        metric.update(logits[start:start + 128], targets[start:start + 128])
    assert torch.equal(metric.compute(), Reliability().forward(logits, targets))


def test_every_evaluation_has_an_ece():
    metrics = metric_collection(3)
    metrics.update(logits_of([[0.85, 0.1, 0.05]]), torch.tensor([1]))
    counts, confidence, correct = metrics.compute()["reliability"]
    assert counts.sum() == 1 and confidence.sum() == pytest.approx(0.85) and correct.sum() == 0


def overconfident(n=4000, temperature=3.0, seed=0):
    """Logits whose softmax is calibrated (labels drawn from it), then multiplied by ``temperature``."""
    generator = torch.Generator().manual_seed(seed)
    calibrated = 1.5 * torch.randn(n, 5, generator=generator)
    targets = torch.multinomial(calibrated.softmax(1), 1, generator=generator).squeeze(1)
    return calibrated * temperature, targets


def test_temperature_scaling_finds_the_overconfidence_and_keeps_the_labels():
    logits, targets = overconfident()
    temperature = fit_temperature(logits, targets)
    assert temperature == pytest.approx(3.0, rel=0.1)
    before, after = reliability_of(logits, targets)["ece"], reliability_of(logits / temperature, targets)["ece"]
    assert after < before / 3
    assert torch.equal(logits.argmax(1), (logits / temperature).argmax(1))
    under, labels = overconfident(temperature=0.5, seed=1)
    assert fit_temperature(under, labels) == pytest.approx(0.5, rel=0.1)


def test_a_stored_temperature_applies_only_to_the_checkpoint_it_was_fitted_for(tmp_path, capsys):
    checkpoint = tmp_path / "run" / "checkpoints" / "best.pt"
    checkpoint.parent.mkdir(parents=True)
    checkpoint.write_bytes(b"weights")
    assert stored_temperature(checkpoint) == 1.0  # not calibrated
    record = calibration_record(checkpoint, 1.7, {"ece": 0.2}, {"ece": 0.05}, {"split": "val"})
    write_calibration(tmp_path / "run", record)
    assert stored_temperature(checkpoint) == 1.7
    assert json.loads((tmp_path / "run" / CALIBRATION_FILE).read_text())["checkpoint"] == "best.pt"
    checkpoint.write_bytes(b"retrained weights")
    assert stored_temperature(checkpoint) == 1.0
    assert "fitted for another best.pt" in capsys.readouterr().err
    (tmp_path / "run" / CALIBRATION_FILE).write_text("{")
    assert stored_temperature(checkpoint) == 1.0 and "unreadable" in capsys.readouterr().err
    assert stored_temperature(tmp_path / "loose.pt") == 1.0  # not inside a run directory
