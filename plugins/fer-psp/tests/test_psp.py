"""Tests of the psp encoder: official layout, checkpoint round trip, errors, preprocessing.

The full-size model has 267M parameters (~1 GB); it is built once per module and
run forward twice (the random model, then the same weights read back from an
official-layout file), on one small batch.
"""

from __future__ import annotations

import inspect
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from fer_core.errors import CheckpointError
from fer_psp.checkpoint import PSP_FORMAT, save_official_checkpoint
from fer_psp.encoder import GradualStyleEncoder, PSPEncoder, build_psp

PSP_OPTS = {
    "encoder_type": "GradualStyleEncoder",
    "input_nc": 3,
    "start_from_latent_avg": True,
    "learn_in_w": False,
    "output_size": 1024,
    "device": "cuda:0",
}


def find_reference(name: str) -> Path | None:
    """The reference JSON in ``shared/reference`` of an ancestor (the repo's sibling ``../shared``)."""
    env = os.environ.get("FER_REFERENCE_DIR")
    candidates = [Path(env) / name] if env else []
    candidates += [parent / "shared" / "reference" / name for parent in Path(__file__).resolve().parents]
    return next((path for path in candidates if path.is_file()), None)


def randomize_(module: torch.nn.Module, seed: int) -> None:
    """Give every 1-d tensor and every BN buffer non-default values, so that a round trip checks them all."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, t in module.state_dict().items():
            if t.dtype == torch.int64:
                t.fill_(int(torch.randint(1, 10_000, (), generator=g)))
            elif name.endswith("running_var"):
                t.uniform_(0.5, 1.5, generator=g)
            elif t.dim() == 1:
                t.normal_(0.0, 0.1, generator=g).add_(1.0 if name.endswith(".weight") else 0.0)


def meta_layout() -> dict[str, torch.Tensor]:
    with torch.device("meta"):
        return GradualStyleEncoder().state_dict()


def cheap_state(layout: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Full-shape tensors that each store one element (stride 0): small fixture files."""
    return {k: torch.zeros((), dtype=v.dtype).expand(v.shape) for k, v in layout.items()}


@pytest.fixture(scope="module")
def psp():
    """The full-size random model (eval mode, random buffers, random latent_avg) and its codes."""
    with pytest.warns(UserWarning, match="randomly initialised"):
        model = build_psp()
    fresh_latent_avg = model.latent_avg.clone()
    randomize_(model.encoder, seed=0)
    model.latent_avg.normal_(generator=torch.Generator().manual_seed(1))
    model.eval()
    images = torch.rand(2, 3, 200, 180, generator=torch.Generator().manual_seed(2))
    captured = {}
    hook = model.encoder.register_forward_hook(lambda mod, inp, out: captured.update(offsets=out))
    with torch.no_grad():
        codes = model(images)
    hook.remove()
    return {
        "model": model,
        "images": images,
        "codes": codes,
        "offsets": captured["offsets"],
        "fresh_latent_avg": fresh_latent_avg,
    }


@pytest.fixture(scope="module")
def official_file(psp, tmp_path_factory):
    decoder = {"style.1.weight": torch.randn(512, 512), "conv1.conv.weight": torch.randn(1, 512, 512, 3, 3)}
    path = tmp_path_factory.mktemp("psp") / "psp_ffhq_encode.pt"
    model = psp["model"]
    return save_official_checkpoint(path, model.encoder.state_dict(), model.latent_avg, PSP_OPTS, decoder)


# --- layout -------------------------------------------------------------------


def test_state_dict_matches_reference_json(psp):
    path = find_reference("psp_encoder_state_dict.json")
    if path is None:
        pytest.skip("shared/reference/psp_encoder_state_dict.json not found next to the repository")
    ref = json.loads(path.read_text())
    state = psp["model"].encoder.state_dict()
    ours = [[k, list(v.shape), str(v.dtype).removeprefix("torch.")] for k, v in state.items()]
    assert ours == ref["keys"]
    assert len(state) == ref["n_state_dict_entries"]
    params = list(psp["model"].encoder.parameters())
    buffers = dict(psp["model"].encoder.named_buffers())
    assert len(params) == ref["n_param_tensors"]
    assert sum(p.numel() for p in params) == ref["n_params"]
    assert list(buffers) == ref["buffer_names"]
    assert sum(b.numel() for b in buffers.values()) == ref["n_buffer_elements"]


def test_module_contract(psp):
    model = psp["model"]
    assert isinstance(model, PSPEncoder)
    assert model.input_size == 256
    assert model.latent_shape == (18, 512)
    assert model.trainable is True and model.cacheable is True
    assert torch.count_nonzero(psp["fresh_latent_avg"]) == 0  # random build: latent_avg zeros
    assert psp["fresh_latent_avg"].shape == (18, 512)
    sig = inspect.signature(build_psp)
    assert list(sig.parameters) == ["checkpoint", "trust_checkpoint"]
    assert all(p.annotation is not inspect.Parameter.empty for p in sig.parameters.values())


def test_forward_shape_and_latent_avg_added(psp):
    codes, offsets = psp["codes"], psp["offsets"]
    assert codes.shape == (2, 18, 512) and codes.dtype == torch.float32
    assert torch.isfinite(codes).all()
    assert offsets.shape == (2, 18, 512)
    assert torch.equal(codes, offsets + psp["model"].latent_avg)
    assert not torch.equal(codes, offsets)


# --- checkpoint round trip -----------------------------------------------------


def test_official_file_layout(official_file, psp):
    ckpt = torch.load(official_file, map_location="cpu", weights_only=True, mmap=True)
    assert set(ckpt) == {"state_dict", "opts", "latent_avg"}
    assert ckpt["opts"] == PSP_OPTS
    assert sum(k.startswith("encoder.") for k in ckpt["state_dict"]) == 621
    assert sum(k.startswith("decoder.") for k in ckpt["state_dict"]) == 2
    assert torch.equal(ckpt["latent_avg"], psp["model"].latent_avg)


def test_checkpoint_round_trip_gives_identical_codes(official_file, psp):
    loaded = build_psp(checkpoint=str(official_file)).eval()
    original = psp["model"].state_dict()
    restored = loaded.state_dict()
    assert list(restored) == list(original)
    assert all(torch.equal(restored[k], original[k]) for k in original)
    assert all(p.requires_grad and p.device.type == "cpu" for p in loaded.parameters())
    with torch.no_grad():
        codes = loaded(psp["images"])
    assert torch.equal(codes, psp["codes"])


# --- wrong files ---------------------------------------------------------------


def write(path: Path, state: dict, opts: dict | None = None, latent_avg=torch.zeros(18, 512)) -> Path:
    return save_official_checkpoint(path, state, latent_avg, PSP_OPTS if opts is None else opts)


def expect_error(path, match: str, **kwargs) -> str:
    with pytest.raises(CheckpointError, match=match) as info:
        build_psp(checkpoint=str(path), **kwargs)
    message = str(info.value)
    assert "\n" not in message and str(path) in message
    return message


def test_missing_keys(tmp_path):
    state = cheap_state(meta_layout())
    del state["styles.17.linear.weight"], state["latlayer2.bias"]
    message = expect_error(write(tmp_path / "f.pt", state), "2 missing")
    assert "encoder.styles.17.linear.weight" in message and "621" in message


def test_unexpected_keys(tmp_path):
    state = cheap_state(meta_layout()) | {"styles.18.linear.weight": torch.zeros(512, 512)}
    expect_error(write(tmp_path / "f.pt", state), "1 unexpected.*encoder.styles.18")


def test_wrong_shape(tmp_path):
    state = cheap_state(meta_layout())
    state["styles.3.linear.weight"] = torch.zeros(512, 256)
    expected = r"'encoder.styles.3.linear.weight' has shape \[512, 256\], expected \[512, 512\]"
    expect_error(write(tmp_path / "f.pt", state), expected)


def test_no_encoder_entries(tmp_path):
    path = tmp_path / "bare.pt"
    torch.save({"state_dict": {"input_layer.0.weight": torch.zeros(64, 3, 3, 3)}, "opts": PSP_OPTS}, path)
    expect_error(path, "no 'encoder.\\*' entries")


def test_e4e_file_given_to_psp(tmp_path):
    opts = {"encoder_type": "Encoder4Editing", "stylegan_size": 1024, "start_from_latent_avg": True}
    message = expect_error(write(tmp_path / "e4e.pt", cheap_state(meta_layout()), opts), "'Encoder4Editing'")
    assert "e4e" in message and "GradualStyleEncoder" in message


def test_other_input_channels(tmp_path):
    expect_error(write(tmp_path / "sketch.pt", {}, PSP_OPTS | {"input_nc": 1}), "1-channel")


def test_missing_or_bad_latent_avg(tmp_path):
    layout = meta_layout()
    state = cheap_state(layout)
    expect_error(write(tmp_path / "a.pt", state, latent_avg=None), "no 'latent_avg'")
    expect_error(write(tmp_path / "b.pt", state, latent_avg=torch.zeros(14, 512)), r"'latent_avg' is \[14, 512\]")


def test_not_a_pSp_checkpoint(tmp_path):
    path = tmp_path / "weights.pt"
    torch.save({"model": {"fc.weight": torch.zeros(2, 2)}}, path)
    expect_error(path, "expected a dict with 'state_dict', 'opts' and 'latent_avg', found keys 'model'")
    torch.save(torch.zeros(3), path)
    expect_error(path, "found Tensor")


def test_non_checkpoint_and_corrupt_files(tmp_path):
    text = tmp_path / "notes.pt"
    text.write_text("these are not weights\n")
    expect_error(text, "cannot read it as a torch checkpoint")
    good = write(tmp_path / "good.pt", {"x": torch.zeros(100)})
    corrupt = tmp_path / "corrupt.pt"
    corrupt.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    expect_error(corrupt, "corrupt, truncated or not a checkpoint")
    empty = tmp_path / "empty.pt"
    empty.write_bytes(b"")
    expect_error(empty, "cannot read")
    expect_error(tmp_path / "absent.pt", "not found")


def test_file_needing_full_unpickling(tmp_path):
    import argparse

    path = tmp_path / "namespace_opts.pt"
    state = {"encoder.latlayer1.bias": torch.zeros(512)}
    torch.save({"state_dict": state, "opts": argparse.Namespace(**PSP_OPTS), "latent_avg": torch.zeros(18, 512)}, path)
    expect_error(path, "argparse.Namespace.*trust_checkpoint: true")
    # Allowed explicitly: loads with a warning, then the layout check speaks.
    with pytest.warns(UserWarning, match="full unpickling"):
        expect_error(path, "620 missing", trust_checkpoint=True)


def test_opts_without_encoder_type_warns(tmp_path):
    opts = {k: v for k, v in PSP_OPTS.items() if k != "encoder_type"}
    with pytest.warns(UserWarning, match="cannot be told apart"):
        expect_error(write(tmp_path / "f.pt", {"latlayer1.bias": torch.zeros(512)}, opts), "620 missing")


# --- preprocessing and packaging ------------------------------------------------


def test_preprocess_matches_torchvision_resize():
    tvf = pytest.importorskip("torchvision.transforms.v2.functional")
    with torch.device("meta"):
        encoder = GradualStyleEncoder()
    wrapper = PSPEncoder(encoder)
    images = torch.rand(2, 3, 112, 96, generator=torch.Generator().manual_seed(3))
    expected = tvf.resize(images, [256, 256], antialias=True) * 2 - 1
    torch.testing.assert_close(wrapper.preprocess(images), expected)
    full = torch.rand(1, 3, 256, 256)
    assert torch.equal(wrapper.preprocess(full), full * 2 - 1)
    gray = torch.rand(1, 1, 256, 256)
    assert torch.equal(wrapper.preprocess(gray), gray.expand(-1, 3, -1, -1) * 2 - 1)
    assert wrapper.preprocess(torch.zeros(1, 3, 64, 64)).min() == -1
    assert wrapper.preprocess(torch.ones(1, 3, 64, 64)).max() == 1


def test_hook_registers_psp_without_importing_torch():
    code = (
        "import sys, fer_psp\n"
        "seen = []\n"
        "fer_psp.register_encoders(lambda name, target, **kw: seen.append((name, target)))\n"
        "assert seen == [('psp', 'fer_psp.encoder:build_psp')], seen\n"
        "assert 'torch' not in sys.modules\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
    from importlib.metadata import entry_points

    assert any(ep.name == "psp" and ep.value == "fer_psp" for ep in entry_points(group="fer_core"))
    assert PSP_FORMAT.official_file == "psp_ffhq_encode.pt"
