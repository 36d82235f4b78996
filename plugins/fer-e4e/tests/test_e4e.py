"""Tests of the e4e encoder: official layout, forward versus pSp on the same weights, round trip, errors.

The full-size model has 267M parameters (~1 GB); it is built once per module and
run forward three times on one image: the random e4e model, a pSp encoder sharing
its tensors, and the e4e model read back from an official-layout file.
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

import fer_psp.blocks
from fer_core.errors import CheckpointError
from fer_e4e.encoder import E4E_FORMAT, E4EEncoder, Encoder4Editing, build_e4e
from fer_psp.checkpoint import save_official_checkpoint
from fer_psp.encoder import GradualStyleEncoder, PSPEncoder

E4E_OPTS = {
    "encoder_type": "Encoder4Editing",
    "stylegan_size": 1024,
    "start_from_latent_avg": True,
    "progressive_start": 20000,
    "progressive_steps": [0] + [2000] * 17,
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


@pytest.fixture(scope="module")
def e4e():
    """The full-size random e4e model (eval mode, random buffers and latent_avg) and its codes."""
    with pytest.warns(UserWarning, match="randomly initialised"):
        model = build_e4e()
    fresh_latent_avg = model.latent_avg.clone()
    randomize_(model.encoder, seed=10)
    model.latent_avg.normal_(generator=torch.Generator().manual_seed(11))
    model.eval()
    images = torch.rand(1, 3, 240, 240, generator=torch.Generator().manual_seed(12))
    with torch.no_grad():
        codes = model(images)
    return {"model": model, "images": images, "codes": codes, "fresh_latent_avg": fresh_latent_avg}


def test_state_dict_matches_reference_json(e4e):
    path = find_reference("e4e_encoder_state_dict.json")
    if path is None:
        pytest.skip("shared/reference/e4e_encoder_state_dict.json not found next to the repository")
    ref = json.loads(path.read_text())
    state = e4e["model"].encoder.state_dict()
    ours = [[k, list(v.shape), str(v.dtype).removeprefix("torch.")] for k, v in state.items()]
    assert ours == ref["keys"]
    params = list(e4e["model"].encoder.parameters())
    assert len(params) == ref["n_param_tensors"]
    assert sum(p.numel() for p in params) == ref["n_params"]
    assert [name for name, _ in e4e["model"].encoder.named_buffers()] == ref["buffer_names"]


def test_module_contract_and_reuse_of_fer_psp(e4e):
    model = e4e["model"]
    assert isinstance(model, E4EEncoder) and isinstance(model, PSPEncoder)
    assert isinstance(model.encoder, Encoder4Editing) and isinstance(model.encoder, GradualStyleEncoder)
    assert type(model.encoder.body[0]) is fer_psp.blocks.BottleneckIRSE  # the modules of fer-psp, not copies
    assert model.input_size == 256 and model.latent_shape == (18, 512)
    assert model.trainable is True and model.cacheable is True
    assert torch.count_nonzero(e4e["fresh_latent_avg"]) == 0 and e4e["fresh_latent_avg"].shape == (18, 512)
    sig = inspect.signature(build_e4e)
    assert list(sig.parameters) == ["checkpoint", "trust_checkpoint"]
    assert all(p.annotation is not inspect.Parameter.empty for p in sig.parameters.values())


def test_codes_shape(e4e):
    codes = e4e["codes"]
    assert codes.shape == (1, 18, 512) and codes.dtype == torch.float32
    assert torch.isfinite(codes).all()


def test_e4e_and_psp_differ_on_the_same_weights(e4e):
    """Same tensors, different forward: row 0 is styles[0] in both; e4e rows 1-17 add it to the pSp rows."""
    model = e4e["model"]
    with torch.device("meta"):
        psp_encoder = GradualStyleEncoder()
    psp_encoder.load_state_dict(model.encoder.state_dict(), assign=True)  # shares the tensors, no copy
    psp = PSPEncoder(psp_encoder, model.latent_avg).eval()
    with torch.no_grad():
        psp_codes = psp(e4e["images"])
    e4e_codes, avg = e4e["codes"], model.latent_avg
    torch.testing.assert_close(e4e_codes[:, 0], psp_codes[:, 0], rtol=0, atol=0)
    assert all(not torch.allclose(e4e_codes[:, i], psp_codes[:, i]) for i in range(1, 18))
    base = psp_codes[:, :1] - avg[:1]  # w0 = styles[0](c3)
    deltas = psp_codes[:, 1:] - avg[1:]  # styles[i](level_i)
    torch.testing.assert_close(e4e_codes[:, 1:], base + deltas + avg[1:])


def test_checkpoint_round_trip_gives_identical_codes(e4e, tmp_path):
    model = e4e["model"]
    decoder = {"style.1.weight": torch.randn(512, 512), "conv1.conv.weight": torch.randn(1, 512, 512, 3, 3)}
    path = tmp_path / "e4e_ffhq_encode.pt"
    save_official_checkpoint(path, model.encoder, model.latent_avg, E4E_OPTS, decoder)
    loaded = build_e4e(checkpoint=str(path)).eval()
    original = model.state_dict()
    restored = loaded.state_dict()
    assert list(restored) == list(original)
    assert all(torch.equal(restored[k], original[k]) for k in original)
    with torch.no_grad():
        codes = loaded(e4e["images"])
    assert torch.equal(codes, e4e["codes"])


# --- wrong files ---------------------------------------------------------------


def cheap_state() -> dict[str, torch.Tensor]:
    """Full-shape tensors that each store one element (stride 0): small fixture files."""
    with torch.device("meta"):
        layout = Encoder4Editing().state_dict()
    return {k: torch.zeros((), dtype=v.dtype).expand(v.shape) for k, v in layout.items()}


def expect_error(path, match: str) -> str:
    with pytest.raises(CheckpointError, match=match) as info:
        build_e4e(checkpoint=str(path))
    message = str(info.value)
    assert "\n" not in message and str(path) in message
    return message


def test_psp_file_given_to_e4e(tmp_path):
    opts = {"encoder_type": "GradualStyleEncoder", "output_size": 1024, "start_from_latent_avg": True}
    path = save_official_checkpoint(tmp_path / "psp.pt", cheap_state(), torch.zeros(18, 512), opts)
    message = expect_error(path, "'GradualStyleEncoder', expected 'Encoder4Editing'")
    assert "encoder name psp" in message


def test_missing_keys_and_wrong_shape(tmp_path):
    state = cheap_state()
    del state["body.23.res_layer.5.fc2.weight"]
    expect_error(save_official_checkpoint(tmp_path / "a.pt", state, torch.zeros(18, 512), E4E_OPTS), "1 missing")
    state = cheap_state() | {"latlayer1.weight": torch.zeros(512, 128, 1, 1)}
    expect_error(save_official_checkpoint(tmp_path / "b.pt", state, torch.zeros(18, 512), E4E_OPTS), "has shape")


def test_non_checkpoint_and_corrupt_files(tmp_path):
    text = tmp_path / "readme.pt"
    text.write_text("not a checkpoint")
    expect_error(text, "cannot read it as a torch checkpoint")
    corrupt = tmp_path / "corrupt.pt"
    torch.save({"state_dict": {}, "opts": E4E_OPTS}, corrupt)
    corrupt.write_bytes(corrupt.read_bytes()[:-40])
    expect_error(corrupt, "corrupt, truncated or not a checkpoint")


def test_hook_registers_e4e_without_importing_torch():
    code = (
        "import sys, fer_e4e\n"
        "seen = []\n"
        "fer_e4e.register_encoders(lambda name, target, **kw: seen.append((name, target)))\n"
        "assert seen == [('e4e', 'fer_e4e.encoder:build_e4e')], seen\n"
        "assert 'torch' not in sys.modules\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
    from importlib.metadata import entry_points, requires

    assert any(ep.name == "e4e" and ep.value == "fer_e4e" for ep in entry_points(group="fer_core"))
    assert "fer-psp" in requires("fer-e4e")
    assert E4E_FORMAT.official_file == "e4e_ffhq_encode.pt"
