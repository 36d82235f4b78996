"""The distill loss: the textbook formula, a frozen teacher, the logit cache, ONNX teachers, bad teachers."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from click.testing import CliRunner

from fer_core.cli import main
from fer_core.errors import RecipeError
from fer_core.inference import load_trained
from fer_core.plugins import get_registry
from fer_distill.loss import DistillLoss
from fer_distill.teacher import fit_to

sys.path.insert(0, str(Path(__file__).parent))
from distill_helpers import CLASSES, load, recipe_text  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")

def build(recipe: dict, classes=CLASSES, counts=(100,) * 7) -> DistillLoss:
    return get_registry().build("loss", recipe["loss"], "loss", {
        "num_classes": len(classes), "class_counts": list(counts), "classes": list(classes), "recipe": recipe})


def distill_recipe(tmp_path, synth, teacher, sample="[]", batch="[]", extra="", size=32) -> dict:
    loss = f"{{name: distill, teacher: '{teacher}', temperature: 3.0, alpha: 0.7, label_smoothing: 0.1{extra}}}"
    return load(tmp_path, recipe_text(synth, loss=loss, sample=sample, batch=batch, size=size))


def count_forwards(module: torch.nn.Module) -> list[int]:
    calls = [0]
    module.register_forward_hook(lambda *_: calls.__setitem__(0, calls[0] + 1))
    return calls


def textbook(student, teacher, targets, temperature, alpha, smoothing):
    """Hinton et al. 2015 with plain ops: alpha T^2 KL(p_t || p_s) + (1 - alpha) CE(s, y)."""
    p_teacher = torch.exp(teacher / temperature) / torch.exp(teacher / temperature).sum(1, keepdim=True)
    p_student = torch.exp(student / temperature) / torch.exp(student / temperature).sum(1, keepdim=True)
    kl = (p_teacher * (torch.log(p_teacher) - torch.log(p_student))).sum(1).mean()
    q = targets if targets.is_floating_point() else torch.eye(student.shape[1])[targets]
    q = q * (1 - smoothing) + smoothing / student.shape[1]
    ce = -(q * torch.log(torch.exp(student) / torch.exp(student).sum(1, keepdim=True))).sum(1).mean()
    return alpha * temperature**2 * kl + (1 - alpha) * ce


def test_loss_equals_the_textbook_formula(tmp_path, synth, teacher_run):
    loss = build(distill_recipe(tmp_path, synth, teacher_run))
    teacher = load_trained(teacher_run).model
    generator = torch.Generator().manual_seed(0)
    images = torch.rand(6, 3, 32, 32, generator=generator)
    student = torch.randn(6, 7, generator=generator) * 3
    with torch.no_grad():
        teacher_logits = teacher(images)[0]
    ids = torch.randint(0, 7, (6,), generator=generator)
    soft = torch.softmax(torch.randn(6, 7, generator=generator), 1)  # CutMix/MixUp-style targets
    for targets in (ids, soft):
        got = loss(student, targets, inputs=images, keys=None)
        want = textbook(student, teacher_logits, targets, 3.0, 0.7, 0.1)
        assert torch.allclose(got, want, atol=1e-5), (got, want)
    # without the batch (the validation loss of evaluate) it is the hard-label term alone
    assert torch.allclose(loss(student, ids), textbook(student, teacher_logits, ids, 3.0, 0.0, 0.1), atol=1e-6)


def test_teacher_stays_frozen_in_eval_mode_and_gets_no_gradients(tmp_path, synth, teacher_run):
    loss = build(distill_recipe(tmp_path, synth, teacher_run, extra=", cache: false"))
    loss.train()
    assert not any(m.training for m in loss.teacher.modules())
    assert not any(p.requires_grad for p in loss.teacher.parameters())
    images = torch.rand(4, 3, 32, 32, requires_grad=True)
    student = torch.randn(4, 7, requires_grad=True)
    loss(student, torch.tensor([0, 1, 2, 3]), inputs=images, keys=["a", "b", "c", "d"]).backward()
    assert student.grad is not None and student.grad.abs().sum() > 0
    assert images.grad is None  # the teacher pass builds no graph
    assert all(p.grad is None for p in loss.teacher.parameters())


def test_cache_returns_the_fresh_logits_and_skips_the_teacher(tmp_path, synth, teacher_run, capsys):
    loss = build(distill_recipe(tmp_path, synth, teacher_run, sample="[{name: resize, size: 32}]"))
    assert loss.cache is not None and "not cached" not in capsys.readouterr().out
    calls = count_forwards(loss.teacher)
    images = torch.rand(5, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    keys = ["k0", "k1", "k2", "k3", "k4"]
    fresh = loss.teacher(images)
    assert calls[0] == 1
    first = loss.teacher_logits(images, keys)
    assert calls[0] == 2 and torch.equal(first, fresh.half().float())
    again = loss.teacher_logits(images.flip(0).flip(0), keys)
    assert calls[0] == 2 and torch.equal(again, first)  # served from the cache
    # a batch with two new keys runs the teacher on those two rows only
    seen = []
    loss.teacher.register_forward_hook(lambda _m, args, _o: seen.append(len(args[0])))
    mixed = loss.teacher_logits(images, ["k0", "new1", "k2", "new2", "k4"])
    assert calls[0] == 3 and seen == [2] and torch.equal(mixed, first)
    assert (loss.cache.hits, loss.cache.misses) == (5 + 3, 5 + 2)
    student = torch.randn(5, 7)
    assert torch.equal(loss(student, torch.zeros(5, dtype=torch.long), inputs=images, keys=keys),
                       loss(student, torch.zeros(5, dtype=torch.long), inputs=images, keys=keys))


def test_cache_holds_one_row_per_training_sample_and_stops_when_full(tmp_path, synth, teacher_run, capsys):
    loss = build(distill_recipe(tmp_path, synth, teacher_run), counts=(1, 1, 1, 0, 0, 0, 0))
    calls = count_forwards(loss.teacher)
    images = torch.rand(2, 3, 32, 32)
    loss.teacher_logits(images, ["a", "b"])
    assert loss.cache.rows.shape == (3, 7) and loss.cache.rows.dtype == torch.float16
    loss.teacher_logits(images, ["c", "d"])  # 4 keys for 3 training samples: the cache turns itself off
    assert loss.cache.full and "cache is full" in capsys.readouterr().out
    loss.teacher_logits(images, ["a", "b"])
    assert calls[0] == 3 and len(loss.cache.index) == 2


@pytest.mark.parametrize("sample, batch, why", [
    ("[]", "[{name: cutmix, alpha: 1.0}]", "augment.batch (cutmix)"),
    ("[]", "[{name: mixup, alpha: 0.2}]", "augment.batch (mixup)"),
    ("[{name: hflip, p: 0.5}]", "[]", "augment.sample[0] (hflip) changes the images randomly"),
])
def test_caching_is_off_when_the_augmentation_changes_the_images(tmp_path, synth, teacher_run, capsys,
                                                                 sample, batch, why):
    loss = build(distill_recipe(tmp_path, synth, teacher_run, sample=sample, batch=batch))
    out = capsys.readouterr().out
    assert loss.cache is None
    assert out.count("\n") == 1 and "teacher logits are not cached" in out and why in out, out
    calls = count_forwards(loss.teacher)
    images = torch.rand(3, 3, 32, 32)
    for _ in range(2):
        loss(torch.randn(3, 7), torch.softmax(torch.randn(3, 7), 1), inputs=images, keys=["a", "b", "c"])
    assert calls[0] == 2


def test_onnx_teacher_gives_the_run_teachers_loss(tmp_path, synth, teacher_run, teacher_onnx):
    from_run = build(distill_recipe(tmp_path, synth, teacher_run, extra=", cache: false"))
    from_onnx = build(distill_recipe(tmp_path, synth, teacher_onnx, extra=", cache: false"))
    generator = torch.Generator().manual_seed(2)
    images, student = torch.rand(8, 3, 32, 32, generator=generator), torch.randn(8, 7, generator=generator)
    targets = torch.randint(0, 7, (8,), generator=generator)
    a = from_run(student, targets, inputs=images, keys=None)
    b = from_onnx(student, targets, inputs=images, keys=None)
    assert abs(a.item() - b.item()) < 1e-4, (a, b)


def test_student_inputs_are_resized_to_the_teachers_size(tmp_path, synth, teacher_run):
    loss = build(distill_recipe(tmp_path, synth, teacher_run, size=48, extra=", cache: false"))
    images = torch.rand(3, 3, 48, 48)
    resized = F.interpolate(images, size=(32, 32), mode="bilinear", antialias=True, align_corners=False)
    with torch.no_grad():
        want = load_trained(teacher_run).model(resized)[0]
    assert torch.allclose(loss.teacher_logits(images, None), want, atol=1e-5)
    assert fit_to(resized, 32) is resized


def test_a_teacher_with_other_classes_is_refused_in_one_line(tmp_path, synth, teacher_run):
    recipe = distill_recipe(tmp_path, synth, teacher_run)
    with pytest.raises(RecipeError, match=r"^loss.teacher: .* predicts the classes .*same classes in the same order$"):
        build(recipe, classes=CLASSES[::-1])


def test_a_missing_teacher_is_a_one_line_error_in_recipe_check(tmp_path, synth):
    missing = tmp_path / "runs" / "nothing"
    recipe = distill_recipe(tmp_path, synth, missing)  # the values are valid; building the loss fails
    with pytest.raises(RecipeError, match="^loss.teacher: .* does not exist"):
        build(recipe)
    result = CliRunner().invoke(main, ["recipe", "check", str(tmp_path / "recipe.yaml")])
    assert result.exit_code == 2, result.output
    assert len(result.output.strip().splitlines()) == 1 and "does not exist" in result.output
