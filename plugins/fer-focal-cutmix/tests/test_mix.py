"""Tests for the batch augments: exact label weights, declared rows, eval mode, odd batches, pickling."""

import pickle

import pytest
import torch
import torch.nn.functional as F

from fer_core.errors import FerError
from fer_focal_cutmix.mix import (
    W_PLUS_ROWS,
    build_cutmix,
    build_cutmix_or_mixup,
    build_latent_cutmix,
    build_latent_mixup,
    build_mixup,
)

pytestmark = pytest.mark.usefixtures("one_thread")

C = 7


def _constant_images(batch, size=16):
    """Sample i is the constant value i + 1 everywhere, and its label is class i."""
    values = torch.arange(1, batch + 1, dtype=torch.float32)
    images = values.view(batch, 1, 1, 1).expand(batch, 3, size, size).contiguous()
    return images, torch.arange(batch)


def _row_latents(batch, tokens=18, dim=4):
    """Row t of sample i holds 100 * (i + 1) + t, so every row tells where it came from."""
    sample = 100 * torch.arange(1, batch + 1, dtype=torch.float32).view(batch, 1, 1)
    row = torch.arange(tokens, dtype=torch.float32).view(1, tokens, 1)
    return (sample + row).expand(batch, tokens, dim).contiguous(), torch.arange(batch)


# --- CutMix / MixUp on images ---


@pytest.mark.parametrize("batch", [1, 2, 5, 6])
def test_cutmix_label_weight_is_the_exact_pasted_area(batch):
    cutmix = build_cutmix(alpha=1.0, num_classes=C)
    images, labels = _constant_images(batch)
    torch.manual_seed(0)
    clipped_or_partial = 0
    for _ in range(40):
        mixed, targets = cutmix(images, labels)
        assert mixed.shape == images.shape and targets.shape == (batch, C)
        torch.testing.assert_close(targets.sum(1), torch.ones(batch))
        for i in range(batch):
            partner = (i - 1) % batch
            kept = (mixed[i] == images[i]).float().mean()
            pasted = (mixed[i] == images[partner]).float().mean()
            if partner == i:  # a batch of one mixes with itself: nothing changes
                assert kept == 1 and targets[i, i] == pytest.approx(1.0)
                continue
            assert kept + pasted == 1  # only the own and the partner's pixels
            assert targets[i, i].item() == pytest.approx(kept.item(), abs=1e-6)
            assert targets[i, partner].item() == pytest.approx(pasted.item(), abs=1e-6)
            clipped_or_partial += 0 < pasted < 1
    assert batch == 1 or clipped_or_partial > 0


def test_cutmix_does_not_modify_its_input():
    images, labels = _constant_images(4)
    before = images.clone()
    torch.manual_seed(0)
    build_cutmix(num_classes=C)(images, labels)
    build_mixup(num_classes=C)(images, labels)
    assert torch.equal(images, before)


@pytest.mark.parametrize("batch", [1, 3, 4])
def test_mixup_blends_inputs_and_labels_with_the_same_weight(batch):
    images, labels = _constant_images(batch)
    torch.manual_seed(1)
    mixed, targets = build_mixup(alpha=0.8, num_classes=C)(images, labels)
    for i in range(batch):
        partner = (i - 1) % batch
        value = mixed[i].unique()
        assert len(value) == 1  # a uniform blend
        if partner == i:
            assert targets[i, i] == pytest.approx(1.0)
            continue
        lam = targets[i, i].item()
        assert value.item() == pytest.approx(lam * (i + 1) + (1 - lam) * (partner + 1), abs=1e-5)
        assert targets[i, partner].item() == pytest.approx(1 - lam, abs=1e-6)


def test_cutmix_or_mixup_switches_by_switch_prob():
    images, labels = _constant_images(4)

    def is_cutmix(mixed):  # cutmix only copies existing values; mixup creates new ones
        return bool(torch.isin(mixed, images).all())

    torch.manual_seed(0)
    always_cutmix = build_cutmix_or_mixup(switch_prob=1.0, num_classes=C)
    always_mixup = build_cutmix_or_mixup(switch_prob=0.0, num_classes=C)
    assert all(is_cutmix(always_cutmix(images, labels)[0]) for _ in range(20))
    assert not any(is_cutmix(always_mixup(images, labels)[0]) for _ in range(20))
    either = build_cutmix_or_mixup(switch_prob=0.5, num_classes=C)
    kinds = [is_cutmix(either(images, labels)[0]) for _ in range(40)]
    assert 5 < sum(kinds) < 35


# --- latent CutMix / MixUp ---


@pytest.mark.parametrize(
    "rows, expected",
    [("coarse", (0, 4)), ("middle", (4, 8)), ("fine", (8, 18)), ([2, 5], (2, 5)), ([0, 18], (0, 18))],
)
@pytest.mark.parametrize("batch", [2, 5])
def test_latent_cutmix_swaps_exactly_the_declared_rows(rows, expected, batch):
    latents, labels = _row_latents(batch)
    mixed, targets = build_latent_cutmix(rows=rows, num_classes=C)(latents, labels)
    start, end = expected
    partner = torch.arange(batch).roll(1)
    swapped = torch.zeros(18, dtype=torch.bool)
    swapped[start:end] = True
    assert torch.equal(mixed[:, swapped], latents[partner][:, swapped])
    assert torch.equal(mixed[:, ~swapped], latents[:, ~swapped])
    fraction = (end - start) / 18
    expected_targets = (1 - fraction) * F.one_hot(labels, C) + fraction * F.one_hot(labels[partner], C)
    torch.testing.assert_close(targets, expected_targets.float())


def test_named_rows_are_the_w_plus_groups():
    assert W_PLUS_ROWS == {"coarse": (0, 4), "middle": (4, 8), "fine": (8, 18)}


def test_named_rows_clip_to_shorter_latents_and_reject_rows_that_do_not_exist():
    latents, labels = _row_latents(3, tokens=14)  # StyleGAN2 at 256 px: 14 w+ rows
    mixed, targets = build_latent_cutmix(rows="fine", num_classes=C)(latents, labels)
    assert torch.equal(mixed[:, 8:14], latents.roll(1, 0)[:, 8:14])
    assert torch.equal(mixed[:, :8], latents[:, :8])
    assert targets[0, 0].item() == pytest.approx(1 - 6 / 14)
    z, labels = _row_latents(3, tokens=1, dim=256)  # VAE-GAN z
    with pytest.raises(FerError, match="rows 'middle' start at row 4 but the latents have 1 rows"):
        build_latent_cutmix(rows="middle", num_classes=C)(z, labels)
    with pytest.raises(FerError, match=r"rows \[2, 20\) do not fit latents of 14 rows"):
        build_latent_cutmix(rows=[2, 20], num_classes=C)(latents, labels)


def test_latent_cutmix_random_rows_are_contiguous_and_weighted_by_their_fraction():
    latents, labels = _row_latents(4)
    cutmix = build_latent_cutmix(rows="random", alpha=1.0, num_classes=C)
    torch.manual_seed(0)
    lengths = set()
    for _ in range(50):
        mixed, targets = cutmix(latents, labels)
        changed = (mixed != latents).any(dim=2)  # [B, T]
        assert (changed == changed[0]).all()  # the same rows in every sample
        rows = changed[0].nonzero().flatten()
        if len(rows):
            assert torch.equal(rows, torch.arange(rows[0], rows[-1] + 1))  # contiguous
            assert torch.equal(mixed[:, rows], latents.roll(1, 0)[:, rows])
        fraction = len(rows) / 18
        assert targets[:, labels].diagonal().tolist() == pytest.approx([1 - fraction] * 4)
        lengths.add(len(rows))
    assert len(lengths) > 5  # lengths vary, as Beta(1, 1) draws them


@pytest.mark.parametrize("batch", [1, 3])
def test_latent_mixup_blends_tokens(batch):
    latents, labels = _row_latents(batch)
    mixup = build_latent_mixup(num_classes=C)
    assert mixup.spaces == ("latent",)
    torch.manual_seed(0)
    mixed, targets = mixup(latents, labels)
    lam = targets[0, 0].item()
    torch.testing.assert_close(mixed, lam * latents + (1 - lam) * latents.roll(1, 0))


# --- behaviour shared by every batch augment ---

ALL_BUILDERS = [build_cutmix, build_mixup, build_cutmix_or_mixup, build_latent_cutmix, build_latent_mixup]


def _inputs_for(augment, batch=4):
    if "image" in augment.spaces:
        return _constant_images(batch)
    return _row_latents(batch)


@pytest.mark.parametrize("build", ALL_BUILDERS)
def test_contract_attributes(build):
    augment = build(num_classes=C)
    assert augment.stage == "batch"
    assert augment.spaces and set(augment.spaces) <= {"image", "latent"}


def test_spaces():
    assert build_cutmix(num_classes=C).spaces == ("image",)
    assert build_cutmix_or_mixup(num_classes=C).spaces == ("image",)
    assert build_mixup(num_classes=C).spaces == ("image", "latent")
    assert build_latent_cutmix(num_classes=C).spaces == ("latent",)
    assert build_latent_mixup(num_classes=C).spaces == ("latent",)


@pytest.mark.parametrize("build", ALL_BUILDERS)
def test_eval_mode_returns_inputs_and_smoothed_one_hot_targets(build):
    augment = build(label_smoothing=0.1, num_classes=C).eval()
    inputs, labels = _inputs_for(augment)
    out, targets = augment(inputs, labels)
    assert torch.equal(out, inputs)
    torch.testing.assert_close(targets, F.one_hot(labels, C).float() * 0.9 + 0.1 / C)


@pytest.mark.parametrize("build", ALL_BUILDERS)
def test_prob_applies_per_batch(build):
    augment = build(prob=0.5, num_classes=C)
    inputs, labels = _inputs_for(augment)
    torch.manual_seed(0)
    mixed = [not torch.equal(augment(inputs, labels)[0], inputs) for _ in range(60)]
    assert 10 < sum(mixed) < 50
    never = build(prob=0.0, num_classes=C)
    assert not any(not torch.equal(never(inputs, labels)[0], inputs) for _ in range(10))


@pytest.mark.parametrize("build", ALL_BUILDERS)
def test_soft_targets_are_mixed_without_smoothing_them_again(build):
    augment = build(label_smoothing=0.2, num_classes=C)
    inputs, labels = _inputs_for(augment, batch=3)
    soft = torch.softmax(torch.randn(3, C), dim=1)
    torch.manual_seed(0)
    out, targets = augment(inputs, soft)
    torch.testing.assert_close(targets.sum(1), torch.ones(3))
    # targets = lam * soft + (1 - lam) * partner's soft, with one scalar lam per batch
    lam = ((targets - soft.roll(1, 0)) / (soft - soft.roll(1, 0))).flatten()
    assert torch.allclose(lam, lam[0], atol=1e-4)
    augment.eval()
    assert torch.equal(augment(inputs, soft)[1], soft)


@pytest.mark.parametrize("build", ALL_BUILDERS)
def test_reproducible_under_torch_manual_seed(build):
    augment = build(num_classes=C)
    inputs, labels = _inputs_for(augment, batch=5)
    torch.manual_seed(42)
    first = augment(inputs, labels)
    torch.manual_seed(42)
    second = augment(inputs, labels)
    assert torch.equal(first[0], second[0]) and torch.equal(first[1], second[1])


@pytest.mark.parametrize("build", ALL_BUILDERS)
def test_modules_pickle_and_still_work(build):
    augment = pickle.loads(pickle.dumps(build(num_classes=C)))
    inputs, labels = _inputs_for(augment, batch=3)
    out, targets = augment(inputs, labels)
    assert out.shape == inputs.shape and targets.shape == (3, C)


def test_half_precision_inputs_keep_their_dtype():
    latents, labels = _row_latents(3)
    for build in (build_latent_cutmix, build_latent_mixup):
        out, targets = build(num_classes=C)(latents.half(), labels)
        assert out.dtype == torch.float16 and targets.dtype == torch.float32
    images, labels = _constant_images(3)
    out, _ = build_cutmix(num_classes=C)(images.bfloat16(), labels)
    assert out.dtype == torch.bfloat16


def test_image_augment_on_latents_is_a_clear_error():
    latents, labels = _row_latents(2)
    with pytest.raises(FerError, match="CutMix works on image batches of 4 dimensions"):
        build_cutmix(num_classes=C)(latents, labels)
    images, labels = _constant_images(2)
    with pytest.raises(FerError, match="LatentCutMix works on latent batches of 3 dimensions"):
        build_latent_cutmix(num_classes=C)(images, labels)


@pytest.mark.parametrize(
    "build, kwargs, message",
    [
        (build_cutmix, dict(alpha=0.0), r"cutmix.alpha must be > 0"),
        (build_mixup, dict(prob=1.5), r"mixup.prob must be in \[0, 1\]"),
        (build_cutmix_or_mixup, dict(switch_prob=-0.1), "switch_prob must be in"),
        (build_latent_cutmix, dict(rows="eyes"), "rows must be random, coarse, middle, fine"),
        (build_latent_cutmix, dict(rows=[5, 2]), r"0 <= start < end"),
        (build_latent_mixup, dict(label_smoothing=1.0), "label_smoothing must be in"),
    ],
)
def test_bad_parameters_are_one_line_errors(build, kwargs, message):
    with pytest.raises(FerError, match=message):
        build(num_classes=C, **kwargs)
