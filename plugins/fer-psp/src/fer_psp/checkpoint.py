"""Official pSp / e4e checkpoint files: read, validate, write.

An official file (``psp_ffhq_encode.pt``, ``e4e_ffhq_encode.pt``) is a dict:

* ``state_dict``: ``encoder.<key>`` tensors (the 621 entries of the encoder) and
  ``decoder.<key>`` tensors (the StyleGAN2 generator; ignored here);
* ``opts``: a plain dict of the training options (``encoder_type``,
  ``output_size`` / ``stylegan_size``, ``start_from_latent_avg``, ...);
* ``latent_avg``: the generator's average W, [18, 512], added to the encoder output.

pSp and e4e encoders have identical keys and shapes; ``opts['encoder_type']``
('GradualStyleEncoder' or 'Encoder4Editing') tells the files apart. Loading is
strict: every encoder key must be present with its shape, nothing extra.
"""

from __future__ import annotations

import argparse
import math
import os
import pickle
import re
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from fer_core.errors import CheckpointError

ENCODER_PREFIX = "encoder."
DECODER_PREFIX = "decoder."
STYLE_DIM = 512


@dataclass(frozen=True)
class OfficialFormat:
    """What one kind of official checkpoint looks like."""

    name: str  # component name in recipes
    title: str  # name used in messages
    encoder_type: str  # opts['encoder_type'] of such files
    size_option: str  # opts key holding the generator's output size
    official_file: str  # the released file

    def num_styles(self, opts: Mapping[str, Any], path: Path) -> int:
        """2*log2(generator size) - 2 style vectors (18 for the 1024x1024 generator)."""
        size = opts.get(self.size_option) or 1024
        if not isinstance(size, int) or size < 16 or size & (size - 1):
            raise CheckpointError(
                f"{path}: opts['{self.size_option}'] is {size!r}, expected a power of two such as 1024"
            )
        return 2 * int(math.log2(size)) - 2


PSP_FORMAT = OfficialFormat("psp", "pSp", "GradualStyleEncoder", "output_size", "psp_ffhq_encode.pt")

# Encoder types of the official code bases -> the fer encoder that reads them (for hints).
READERS = {"GradualStyleEncoder": "psp (plugin fer-psp)", "Encoder4Editing": "e4e (plugin fer-e4e)"}


# --- reading -----------------------------------------------------------------


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return (text.splitlines()[0] if text else type(err).__name__)[:200]


def read_checkpoint(path: str | os.PathLike, trust: bool = False) -> Any:
    """``torch.load`` on CPU, weights-only; full unpickling only when ``trust`` is set."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} not found; check the path (or download the official file)")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        needs = re.search(r"GLOBAL ([\w.]+)", str(err))
        if needs is None:
            raise _unreadable(path, err) from err
        if not trust:
            raise CheckpointError(
                f"{path}: weights-only loading refused the object {needs.group(1)}; the file needs full "
                f"unpickling, which can run code from the file: if you trust its source, set "
                f"trust_checkpoint: true"
            ) from err
        warnings.warn(f"{path}: loading with full unpickling (trust_checkpoint=True)", UserWarning, stacklevel=3)
        try:
            return torch.load(path, map_location="cpu", weights_only=False)
        except Exception as err2:
            raise _unreadable(path, err2) from err2
    except Exception as err:
        raise _unreadable(path, err) from err


def _unreadable(path: Path, err: BaseException) -> CheckpointError:
    return CheckpointError(
        f"{path}: cannot read it as a torch checkpoint ({type(err).__name__}: {_first_line(err)}); "
        f"the file is corrupt, truncated or not a checkpoint"
    )


# --- validation --------------------------------------------------------------


def official_opts(ckpt: Any, path: Path, fmt: OfficialFormat) -> dict[str, Any]:
    """Check the top level and the encoder type; return opts as a dict."""
    expected = "a dict with 'state_dict', 'opts' and 'latent_avg'"
    if not isinstance(ckpt, dict):
        raise CheckpointError(
            f"{path}: not an official {fmt.title} checkpoint: expected {expected}, found {type(ckpt).__name__}"
        )
    if "state_dict" not in ckpt or "opts" not in ckpt:
        found = ", ".join(repr(k) for k in list(ckpt)[:6]) or "an empty dict"
        raise CheckpointError(
            f"{path}: not an official {fmt.title} checkpoint: expected {expected}, found keys {found}"
        )
    opts = ckpt["opts"]
    if isinstance(opts, argparse.Namespace):  # only reachable through a trusted full unpickling
        opts = vars(opts)
    if not isinstance(opts, dict):
        raise CheckpointError(
            f"{path}: 'opts' is a {type(opts).__name__}, expected a dict of training options"
        )
    encoder_type = opts.get("encoder_type")
    if encoder_type is None:
        warnings.warn(
            f"{path}: opts has no 'encoder_type', so pSp and e4e files cannot be told apart; "
            f"reading it as {fmt.title} ({fmt.encoder_type})",
            UserWarning,
            stacklevel=3,
        )
    elif encoder_type != fmt.encoder_type:
        hint = f"; read it with encoder name {READERS[encoder_type]}" if encoder_type in READERS else ""
        raise CheckpointError(
            f"{path}: opts['encoder_type'] is '{encoder_type}', expected '{fmt.encoder_type}' "
            f"(a {fmt.title} checkpoint such as {fmt.official_file}){hint}"
        )
    in_chans = opts.get("input_nc", 3)
    if in_chans != 3:
        raise CheckpointError(
            f"{path}: this {fmt.title} model takes {in_chans}-channel inputs (opts['input_nc']), "
            f"expected an RGB face encoder such as {fmt.official_file}"
        )
    return opts


def encoder_entries(ckpt: dict, path: Path, fmt: OfficialFormat) -> dict[str, Any]:
    """The ``encoder.*`` entries of ``state_dict`` with the prefix removed."""
    state = ckpt["state_dict"]
    if not isinstance(state, Mapping):
        raise CheckpointError(f"{path}: 'state_dict' is a {type(state).__name__}, expected a dict of tensors")
    entries = {
        k[len(ENCODER_PREFIX) :]: v for k, v in state.items() if isinstance(k, str) and k.startswith(ENCODER_PREFIX)
    }
    if not entries:
        example = f" such as {next(iter(state))!r}" if state else ""
        raise CheckpointError(
            f"{path}: 'state_dict' has no 'encoder.*' entries ({len(state)} entries{example}); "
            f"expected the official {fmt.title} layout of {fmt.official_file}"
        )
    return entries


def check_layout(
    entries: Mapping[str, Any], expected: Mapping[str, torch.Tensor], path: Path, fmt: OfficialFormat
) -> None:
    """Every expected key present with its shape and kind of dtype, and nothing else."""
    missing = [k for k in expected if k not in entries]
    unexpected = [k for k in entries if k not in expected]
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing (e.g. '{ENCODER_PREFIX}{missing[0]}')")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected (e.g. '{ENCODER_PREFIX}{unexpected[0]}')")
        raise CheckpointError(
            f"{path}: encoder entries do not match the {fmt.title} layout: {', '.join(parts)}; "
            f"expected the {len(expected)} '{ENCODER_PREFIX}*' entries of {fmt.official_file}"
        )
    wrong = []
    for key, ref in expected.items():
        value = entries[key]
        if not isinstance(value, torch.Tensor):
            wrong.append(f"'{ENCODER_PREFIX}{key}' is a {type(value).__name__}, expected a tensor {list(ref.shape)}")
        elif tuple(value.shape) != tuple(ref.shape):
            wrong.append(f"'{ENCODER_PREFIX}{key}' has shape {list(value.shape)}, expected {list(ref.shape)}")
        elif value.is_floating_point() != ref.is_floating_point():
            wrong.append(f"'{ENCODER_PREFIX}{key}' has dtype {value.dtype}, expected {ref.dtype}")
    if wrong:
        raise CheckpointError(
            f"{path}: {wrong[0]} ({len(wrong)} of {len(expected)} entries differ); "
            f"not a {fmt.title} checkpoint of the official layout ({fmt.official_file})"
        )


def official_latent_avg(ckpt: dict, opts: Mapping[str, Any], num_styles: int, path: Path) -> torch.Tensor:
    """latent_avg as [num_styles, 512]; zeros when the model was trained without it."""
    shape = (num_styles, STYLE_DIM)
    if opts.get("start_from_latent_avg") is False:
        return torch.zeros(shape)  # the official forward adds nothing then
    latent_avg = ckpt.get("latent_avg")
    if latent_avg is None:
        raise CheckpointError(
            f"{path}: no 'latent_avg' next to 'state_dict' (opts['start_from_latent_avg'] is not false); "
            f"expected a tensor {list(shape)}"
        )
    accepted = (shape, (STYLE_DIM,), (1, STYLE_DIM))
    if not isinstance(latent_avg, torch.Tensor) or tuple(latent_avg.shape) not in accepted:
        found = list(latent_avg.shape) if isinstance(latent_avg, torch.Tensor) else type(latent_avg).__name__
        raise CheckpointError(f"{path}: 'latent_avg' is {found}, expected a tensor {list(shape)} (or [{STYLE_DIM}])")
    return latent_avg.detach().to(torch.float32).expand(shape).clone()


# --- loading -----------------------------------------------------------------


def load_official_encoder(
    path: str | os.PathLike,
    fmt: OfficialFormat,
    encoder_cls: Callable[..., nn.Module],
    trust: bool = False,
) -> tuple[nn.Module, torch.Tensor]:
    """Build ``encoder_cls(num_styles=...)`` from an official file; return (encoder, latent_avg).

    The layout is checked against an encoder built on the meta device (no memory),
    then the file's tensors become the parameters (no second copy).
    """
    path = Path(path)
    ckpt = read_checkpoint(path, trust)
    opts = official_opts(ckpt, path, fmt)
    entries = encoder_entries(ckpt, path, fmt)
    num_styles = fmt.num_styles(opts, path)
    with torch.device("meta"):
        encoder = encoder_cls(num_styles=num_styles)
    expected = encoder.state_dict()
    check_layout(entries, expected, path, fmt)
    latent_avg = official_latent_avg(ckpt, opts, num_styles, path)
    state = {k: entries[k].detach().to(ref.dtype).contiguous() for k, ref in expected.items()}
    encoder.load_state_dict(state, strict=True, assign=True)
    return encoder, latent_avg


# --- writing -----------------------------------------------------------------


def _cpu(value: Any) -> Any:
    return value.detach().cpu() if isinstance(value, torch.Tensor) else value


def save_official_checkpoint(
    path: str | os.PathLike,
    encoder_state: Mapping[str, torch.Tensor] | nn.Module,
    latent_avg: torch.Tensor | None,
    opts: Mapping[str, Any],
    decoder_state: Mapping[str, torch.Tensor] | None = None,
) -> Path:
    """Write a checkpoint in the official pSp/e4e layout (atomically) and return its path.

    encoder_state: the encoder's state dict, or the encoder module itself (a
        ``PSPEncoder``/``E4EEncoder`` wrapper gives its inner ``.encoder``).
    latent_avg: [18, 512] (or [512]); None leaves it out.
    opts: the training options; set ``encoder_type`` ('GradualStyleEncoder' or
        'Encoder4Editing') so that the file can be told apart.
    decoder_state: optional generator weights, stored under ``decoder.*``.
    """
    if isinstance(encoder_state, nn.Module):
        module = encoder_state
        if hasattr(module, "latent_avg") and isinstance(getattr(module, "encoder", None), nn.Module):
            module = module.encoder
        encoder_state = module.state_dict()
    state = {ENCODER_PREFIX + k: _cpu(v) for k, v in encoder_state.items()}
    state.update({DECODER_PREFIX + k: _cpu(v) for k, v in (decoder_state or {}).items()})
    ckpt: dict[str, Any] = {"state_dict": state, "opts": dict(opts)}
    if latent_avg is not None:
        ckpt["latent_avg"] = _cpu(latent_avg)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    torch.save(ckpt, tmp)
    os.replace(tmp, path)
    return path
