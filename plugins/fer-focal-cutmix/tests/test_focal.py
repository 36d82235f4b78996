"""Tests for the focal loss: cross-entropy at gamma 0, gradients, class weights, mixed precision."""

import pickle

import pytest
import torch
import torch.nn.functional as F

from fer_core.errors import FerError
from fer_focal_cutmix.focal import FocalLoss, auto_class_weights, build_focal

pytestmark = pytest.mark.usefixtures("one_thread")

C = 7


def _batch(n=8, seed=0, dtype=torch.float32):
    gen = torch.Generator().manual_seed(seed)
    logits = torch.randn(n, C, generator=gen, dtype=dtype) * 3
    labels = torch.randint(C, (n,), generator=gen)
    soft = torch.softmax(torch.randn(n, C, generator=gen, dtype=dtype), dim=1)
    return logits, labels, soft


@pytest.mark.parametrize("smoothing", [0.0, 0.1])
def test_gamma_zero_is_cross_entropy_for_hard_targets(smoothing):
    logits, labels, _ = _batch(dtype=torch.float64)
    loss = build_focal(gamma=0.0, label_smoothing=smoothing, num_classes=C)(logits, labels)
    torch.testing.assert_close(loss, F.cross_entropy(logits, labels, label_smoothing=smoothing), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("smoothing", [0.0, 0.1])
def test_gamma_zero_is_cross_entropy_for_soft_targets(smoothing):
    logits, _, soft = _batch(dtype=torch.float64)
    loss = build_focal(gamma=0.0, label_smoothing=smoothing, num_classes=C)(logits, soft)
    torch.testing.assert_close(loss, F.cross_entropy(logits, soft, label_smoothing=smoothing), rtol=1e-12, atol=1e-12)


def test_gamma_zero_with_alpha_is_weighted_cross_entropy_averaged_over_the_batch():
    logits, labels, soft = _batch(dtype=torch.float64)
    alpha = [0.5, 2.0, 1.0, 1.5, 0.25, 1.0, 3.0]
    focal = build_focal(gamma=0.0, alpha=alpha, num_classes=C)
    weight = torch.tensor(alpha, dtype=torch.float64)
    expected_hard = F.cross_entropy(logits, labels, weight=weight, reduction="sum") / len(labels)
    torch.testing.assert_close(focal(logits, labels), expected_hard, rtol=1e-12, atol=1e-12)
    # torch's own semantics for probability targets: a plain batch mean
    torch.testing.assert_close(focal(logits, soft), F.cross_entropy(logits, soft, weight=weight), rtol=1e-12, atol=1e-12)


def test_focal_matches_the_paper_formula_for_hard_targets():
    logits, labels, _ = _batch(dtype=torch.float64)
    alpha = torch.linspace(0.5, 2.0, C, dtype=torch.float64)
    focal = build_focal(gamma=2.0, alpha=alpha.tolist(), num_classes=C, reduction="none")
    p_t = torch.softmax(logits, 1).gather(1, labels[:, None]).squeeze(1)
    expected = -alpha[labels] * (1 - p_t) ** 2 * torch.log(p_t)
    torch.testing.assert_close(focal(logits, labels), expected, rtol=1e-10, atol=1e-12)


def test_focal_down_weights_easy_examples():
    logits, labels, _ = _batch()
    ce = F.cross_entropy(logits, labels, reduction="none")
    focal = build_focal(gamma=2.0, num_classes=C, reduction="none")(logits, labels)
    assert (focal <= ce + 1e-7).all()
    assert focal.sum() < ce.sum()


def test_soft_target_focal_is_the_target_weighted_per_class_focal_term():
    logits, _, soft = _batch(dtype=torch.float64)
    log_p = torch.log_softmax(logits, 1)
    expected = -(soft * (1 - log_p.exp()) ** 2 * log_p).sum(1)
    loss = build_focal(gamma=2.0, num_classes=C, reduction="none")(logits, soft)
    torch.testing.assert_close(loss, expected)
    # a one-hot soft target gives the same loss as the class id
    _, labels, _ = _batch(dtype=torch.float64)
    focal = build_focal(gamma=2.0, num_classes=C, label_smoothing=0.1)
    torch.testing.assert_close(focal(logits, labels), focal(logits, F.one_hot(labels, C).double()))


@pytest.mark.parametrize("gamma", [2.0, 0.5])
@pytest.mark.parametrize("soft", [False, True])
def test_gradient_matches_finite_differences(gamma, soft):
    logits, labels, soft_targets = _batch(n=4, dtype=torch.float64)
    targets = soft_targets if soft else labels
    focal = build_focal(gamma=gamma, alpha=[1.0, 2.0, 0.5, 1.0, 1.0, 3.0, 0.7], label_smoothing=0.1, num_classes=C)
    logits = logits.clone().requires_grad_(True)
    assert torch.autograd.gradcheck(lambda z: focal(z, targets), (logits,), eps=1e-6, atol=1e-6)


def test_auto_alpha_is_inverse_frequency_with_mean_one_over_samples():
    counts = [10, 20, 70]
    weights = auto_class_weights(counts)
    torch.testing.assert_close(weights, torch.tensor([100 / 30, 100 / 60, 100 / 210]))
    assert float((weights * torch.tensor(counts, dtype=torch.float32)).sum() / sum(counts)) == pytest.approx(1.0)
    focal = build_focal(alpha="auto", num_classes=3, class_counts=counts)
    torch.testing.assert_close(focal.alpha, weights)
    # class_weights is the same setting under cross_entropy's name
    torch.testing.assert_close(build_focal(class_weights="auto", num_classes=3, class_counts=counts).alpha, weights)


def test_explicit_alpha_list():
    focal = build_focal(alpha=[1, 2, 3], num_classes=3)
    torch.testing.assert_close(focal.alpha, torch.tensor([1.0, 2.0, 3.0]))
    assert build_focal(num_classes=3).alpha is None


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(alpha="auto"), "needs the training split's class counts"),
        (dict(alpha="auto", class_counts=[5, 0, 3]), r"class index \[1\] has none"),
        (dict(alpha=[1.0, 2.0]), "must be 'auto' or a list of 3 class weights"),
        (dict(alpha="balanced"), "must be 'auto' or a list"),
        (dict(alpha=[1.0, -1.0, 1.0]), "non-negative"),
        (dict(alpha="auto", class_weights="auto", class_counts=[1, 2, 3]), "give only one"),
        (dict(gamma=-1.0), "gamma must be >= 0"),
        (dict(reduction="avg"), "reduction must be one of mean, sum, none"),
        (dict(label_smoothing=1.0), r"label_smoothing must be in \[0, 1\)"),
    ],
)
def test_bad_parameters_are_one_line_errors(kwargs, message):
    with pytest.raises(FerError, match=message):
        build_focal(num_classes=3, **kwargs)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_large_logits_under_mixed_precision_give_finite_loss_and_gradients(dtype):
    _, labels, soft = _batch()
    logits = (torch.randn(8, C, generator=torch.Generator().manual_seed(3)) * 2e4).to(dtype).requires_grad_(True)
    for gamma in (2.0, 0.5):
        focal = build_focal(gamma=gamma, alpha=[1.0] * C, label_smoothing=0.1, num_classes=C)
        for targets in (labels, soft):
            with torch.autocast("cpu", dtype=torch.bfloat16):
                loss = focal(logits, targets)
            assert loss.dtype == torch.float32
            assert torch.isfinite(loss)
            (grad,) = torch.autograd.grad(loss, logits)
            assert torch.isfinite(grad.float()).all()


def test_saturated_correct_prediction_has_zero_loss_and_finite_gradient():
    logits = torch.tensor([[200.0, 0.0, 0.0]], requires_grad=True)  # p = 1 exactly in float32
    for gamma in (0.25, 2.0):
        loss = build_focal(gamma=gamma, num_classes=3)(logits, torch.tensor([0]))
        (grad,) = torch.autograd.grad(loss, logits)
        assert loss.item() == 0.0
        assert torch.isfinite(grad).all()


def test_reductions():
    logits, labels, _ = _batch()
    per_sample = build_focal(reduction="none", num_classes=C)(logits, labels)
    assert per_sample.shape == (8,)
    torch.testing.assert_close(build_focal(reduction="sum", num_classes=C)(logits, labels), per_sample.sum())
    torch.testing.assert_close(build_focal(num_classes=C)(logits, labels), per_sample.mean())


def test_pickles_and_moves_with_its_weights():
    focal = build_focal(alpha="auto", num_classes=3, class_counts=[1, 2, 3])
    clone = pickle.loads(pickle.dumps(focal))
    assert isinstance(clone, FocalLoss)
    torch.testing.assert_close(clone.alpha, focal.alpha)
    assert "alpha" in dict(focal.named_buffers())
    assert focal.state_dict() == {}  # weights are derived from the recipe, not checkpointed
