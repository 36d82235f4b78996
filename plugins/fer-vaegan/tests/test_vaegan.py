"""The VAE-GAN parts: shapes at the reference size, KL and reparameterisation, learning on a fixed batch."""

from __future__ import annotations

import contextlib
import math

import numpy as np
import pytest
import torch
from torch.distributions import Normal, kl_divergence as torch_kl

from fer_core.data.synth import synthesize
from fer_core.testing import check_encoder, check_plugin
from fer_vaegan.vaegan import PatchDiscriminator, build_vaegan, kl_divergence, reparameterize

pytestmark = pytest.mark.usefixtures("one_thread")

ADAM = {"name": "adam", "lr": 2.0e-3, "betas": [0.5, 0.999], "weight_decay": 0.0, "momentum": 0.9,
        "nesterov": False}
TINY = {"latent_dim": 16, "widths": [8, 16, 32], "disc_body": "resnet10t"}


def faces(n: int, size: int) -> torch.Tensor:
    """Synthetic faces [n, 3, size, size] in [0, 1]."""
    pixels = np.stack([image for _, image in synthesize(n, size=size, seed=5)])
    return torch.from_numpy(pixels).permute(0, 3, 1, 2).float() / 255


def test_plugin_registers_vaegan_cheaply():
    assert [c.name for c in check_plugin("fer-vaegan")] == ["vaegan"]


def test_vaegan_conforms_to_the_encoder_contract():
    check_encoder("vaegan", {"latent_dim": 16, "widths": [8, 16]}, image_size=32, plugin="fer-vaegan")


def test_every_part_has_the_reference_shapes_at_96px():
    torch.manual_seed(0)
    model = build_vaegan().eval()  # the reference: 96x96, widths 32..512, 256-d latent
    assert model.input_size == 96 and model.latent_shape == (1, 256) and model.trainable and model.cacheable
    images = torch.rand(2, 3, 96, 96)
    with torch.no_grad():
        features = model.encoder.features(images * 2 - 1)
        mu, logvar = model.encode(images)
        decoded = model.decode(mu)
        tokens = model(images)
    assert features.shape == (2, 512, 3, 3)
    assert mu.shape == logvar.shape == (2, 256)
    assert decoded.shape == (2, 3, 96, 96) and 0 < decoded.min() and decoded.max() < 1
    assert tokens.shape == (2, 1, 256) and torch.equal(tokens[:, 0], mu)
    assert model(torch.rand(2, 3, 48, 48)).shape == (2, 1, 256)  # other sizes are resized to 96

    discriminator = PatchDiscriminator("resnet50").eval()
    assert discriminator.body.feature_info.channels()[-1] == 2048
    with torch.no_grad():
        assert discriminator(decoded).shape == (2, 1, 3, 3)
    assert not any("disc" in key for key in model.state_dict())


def test_kl_matches_the_closed_form_of_torch_distributions():
    g = torch.Generator().manual_seed(0)
    mu, logvar = torch.randn(4, 256, generator=g) * 2, torch.randn(4, 256, generator=g)
    expected = torch_kl(Normal(mu, torch.exp(0.5 * logvar)), Normal(0.0, 1.0))
    assert torch.allclose(kl_divergence(mu, logvar), expected, atol=1e-5, rtol=1e-5)
    assert torch.equal(kl_divergence(torch.zeros(3), torch.zeros(3)), torch.zeros(3))  # the prior itself


def test_reparameterisation_samples_the_posterior_and_passes_gradients():
    mu = torch.tensor([0.5, -1.0, 2.0], requires_grad=True)
    logvar = torch.tensor([math.log(0.25), math.log(4.0), 0.0], requires_grad=True)
    torch.manual_seed(0)
    z = reparameterize(mu.expand(200_000, 3), logvar.expand(200_000, 3))
    assert torch.allclose(z.mean(0), mu, atol=0.02)
    assert torch.allclose(z.std(0), torch.tensor([0.5, 2.0, 1.0]), rtol=0.01)

    torch.manual_seed(1)
    z = reparameterize(mu, logvar)
    torch.manual_seed(1)
    eps = torch.randn(3)
    sigma = torch.exp(0.5 * logvar.detach())
    assert torch.allclose(z, mu.detach() + sigma * eps)
    z.sum().backward()
    assert torch.equal(mu.grad, torch.ones(3))  # dz/dmu = 1
    assert torch.allclose(logvar.grad, 0.5 * sigma * eps)  # dz/dlogvar = sigma * eps / 2


def test_a_few_pretraining_steps_lower_the_reconstruction_loss_on_a_fixed_batch():
    torch.manual_seed(0)
    model = build_vaegan(image_size=32, **TINY)
    model.configure_pretraining({**ADAM, "lr": 5.0e-3}, "cpu")
    batch = faces(8, 32)
    before = model.eval().pretrain_eval(batch)["l1"]
    model.train()
    steps = [model.pretrain_step(batch) for _ in range(30)]
    after = model.eval().pretrain_eval(batch)["l1"]  # through the mean, with BatchNorm's running statistics
    assert after < 0.8 * before, (before, after)
    assert steps[-1]["l1"] < steps[0]["l1"]
    assert {"loss", "adv", "l1", "bce", "kl", "d_loss", "d_real", "d_fake"} <= set(steps[0])
    assert all(math.isfinite(v) for step in steps for v in step.values())


def test_generator_loss_is_the_weighted_sum_of_its_terms():
    torch.manual_seed(0)
    model = build_vaegan(image_size=32, adv_weight=0.5, l1_weight=10.0, bce_weight=2.0, kl_weight=0.1, **TINY)
    model.configure_pretraining(ADAM, "cpu")
    step = {name: float(value) for name, value in model.pretrain_step(faces(4, 32)).items()}  # 0-d tensors
    expected = 0.5 * step["adv"] + 10.0 * step["l1"] + 2.0 * step["bce"] + 0.1 * step["kl"]
    assert step["loss"] == pytest.approx(expected, rel=1e-5)
    assert step["d_loss"] == pytest.approx(step["d_real"] + step["d_fake"], rel=1e-5)


def test_bf16_autocast_step_on_cpu_is_finite():
    torch.manual_seed(0)
    model = build_vaegan(image_size=32, **TINY)
    model.configure_pretraining(ADAM, "cpu", torch.bfloat16)
    step = model.pretrain_step(faces(4, 32), lambda: torch.autocast("cpu", dtype=torch.bfloat16))
    assert all(math.isfinite(v) for v in step.values())


def test_pretraining_state_is_plain_data_and_outside_the_state_dict(tmp_path):
    torch.manual_seed(0)
    model = build_vaegan(image_size=32, **TINY)
    assert not any(p.requires_grad for p in model.decoder.parameters())  # as a FER encoder: the mean's path only
    model.configure_pretraining(ADAM, "cpu")
    assert all(p.requires_grad for p in model.parameters())
    model.pretrain_step(faces(4, 32), contextlib.nullcontext)
    assert set(model.state_dict()) == set(build_vaegan(image_size=32, **TINY).state_dict())
    torch.save(model.pretrain_state(), tmp_path / "state.pt")
    state = torch.load(tmp_path / "state.pt", weights_only=True)
    other = build_vaegan(image_size=32, **TINY)
    other.configure_pretraining(ADAM, "cpu")
    other.load_pretrain_state(state)
    for key, value in model.pretraining.discriminator.state_dict().items():
        assert torch.equal(other.pretraining.discriminator.state_dict()[key], value), key


def test_sizes_that_do_not_halve_evenly_are_refused():
    with pytest.raises(Exception, match="multiple of 2\\^5 = 32"):
        build_vaegan(image_size=100)
    with pytest.raises(Exception, match="unknown timm model"):
        build_vaegan(image_size=32, disc_body="resnet5O")
