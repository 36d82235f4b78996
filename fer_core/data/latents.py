"""What identifies cached latents: the encoder, its parameters, its checkpoint's bytes, the input pixels.

Latent shards (``fer data encode``) are a data set directory whose samples hold ``latent.npy``
(float16 [T, D]) instead of an image, and whose ``dataset.json`` has a ``latent`` section::

    "latent": {"encoder": "psp", "params": {...}, "checkpoint_sha256": "9f2c...",
               "input": {"image_size": 48, "channels": 3}, "shape": [18, 512], "dtype": "float16",
               "source": "data/fer2013", "source_manifest_sha256": "...", "checkpoint": "pretrained/...",
               "fer_core": "0.1.0"}

The first four fields are the cache key: a run may read the latents instead of running its
encoder only when its recipe gives the same key. ``params`` are the factory's parameters with
their defaults filled in, less the checkpoint path (its sha256 stands for it, so the file may
move) and ``trust_checkpoint`` (how the file is read, not what it holds). Only encoders whose
output is fixed by the key are cacheable: those that load a checkpoint, and parameter-free ones.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from fer_core.data.shards import MANIFEST_NAME
from fer_core.errors import CheckpointError

KEY_FIELDS = ("encoder", "params", "checkpoint_sha256", "input")
NOT_KEY_PARAMS = ("name", "freeze", "checkpoint", "trust_checkpoint")
LATENTS_DIR = "latents"  # default cache location: <data root>/latents/<encoder>-<key digest>/

_SHA_CACHE: dict[tuple[str, int, int], str] = {}


def checkpoint_sha256(path: str | os.PathLike) -> str:
    """sha256 of a file (read in 1 MB chunks), remembered per (path, size, mtime)."""
    path = Path(path)
    if path.is_dir():  # a run directory (e.g. a VAE-GAN pretraining run): hash its best checkpoint
        from fer_core.runs import resolve_checkpoint

        path = resolve_checkpoint(path)
    try:
        stat = path.stat()
    except OSError:
        raise CheckpointError(f"checkpoint {path} does not exist; fix model.encoder.checkpoint "
                              f"(or --checkpoint)") from None
    memo = (str(path.resolve()), stat.st_size, stat.st_mtime_ns)
    if memo not in _SHA_CACHE:
        digest = hashlib.sha256()
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                digest.update(chunk)
        _SHA_CACHE[memo] = digest.hexdigest()
    return _SHA_CACHE[memo]


def encoder_params(spec: Mapping[str, Any], registry=None) -> dict[str, Any]:
    """The spec's parameters over the factory's defaults, as plain JSON, less the non-key ones."""
    params: dict[str, Any] = {}
    if registry is not None:
        signature = registry.get("encoder", spec["name"], "model.encoder.name").parameters() or {}
        params = {n: p.default for n, p in signature.items() if p.default is not p.empty}
    params.update(spec)
    plain = {k: v for k, v in params.items() if k not in NOT_KEY_PARAMS}
    return json.loads(json.dumps(plain, sort_keys=True, default=str))


def latent_cache_key(spec: Mapping[str, Any], image_size: int, channels: int, *, registry=None,
                     random_seed: int | None = None) -> dict[str, Any]:
    """The key of ``spec``'s latents of images decoded at ``image_size`` with ``channels``.

    ``checkpoint_sha256`` is the checkpoint file's hash, ``random-seed-<seed>`` for random
    weights encoded on purpose (benchmarks, tests; no recipe matches those), or None for a
    parameter-free encoder.
    """
    if spec.get("checkpoint"):
        sha = checkpoint_sha256(spec["checkpoint"])
    else:
        sha = None if random_seed is None else f"random-seed-{random_seed}"
    return {"encoder": spec["name"], "params": encoder_params(spec, registry), "checkpoint_sha256": sha,
            "input": {"image_size": int(image_size), "channels": int(channels)}}


def key_of(latent: Mapping[str, Any]) -> dict[str, Any]:
    """The key fields of a manifest's ``latent`` section."""
    return {k: latent.get(k) for k in KEY_FIELDS}


def same_key(a: Mapping[str, Any], b: Mapping[str, Any]) -> bool:
    return _canonical(key_of(a)) == _canonical(key_of(b))


def key_digest(key: Mapping[str, Any]) -> str:
    return hashlib.sha256(_canonical(key_of(key)).encode()).hexdigest()


def default_latent_dir(root: str | os.PathLike, key: Mapping[str, Any]) -> Path:
    """``<root>/latents/<encoder>-<first 12 hex of the key's sha256>``."""
    return Path(root) / LATENTS_DIR / f"{key['encoder']}-{key_digest(key)[:12]}"


def manifest_sha256(root: str | os.PathLike) -> str:
    """Fingerprint of a data set: re-packing it changes its manifest, so stale caches are noticed."""
    return hashlib.sha256((Path(root) / MANIFEST_NAME).read_bytes()).hexdigest()


def describe(key: Mapping[str, Any]) -> str:
    """'psp (checkpoint 9f2c0a1b7d3e, 48px x3)' for messages."""
    sha = key.get("checkpoint_sha256")
    weights = ("no checkpoint" if sha is None else sha if str(sha).startswith("random") else f"checkpoint {sha[:12]}")
    params = ", ".join(f"{k}={v}" for k, v in sorted((key.get("params") or {}).items()))
    size = key.get("input") or {}
    return (f"{key.get('encoder')}" + (f" with {params}" if params else "")
            + f" ({weights}, {size.get('image_size')}px x{size.get('channels')})")


def key_difference(made: Mapping[str, Any], wanted: Mapping[str, Any]) -> str:
    """Which key fields differ, for one-line messages."""
    names = {"encoder": "encoder", "params": "parameters", "checkpoint_sha256": "checkpoint", "input": "input size"}
    return ", ".join(names[k] for k in KEY_FIELDS if _canonical(made.get(k)) != _canonical(wanted.get(k)))


def uncacheable_reason(spec: Mapping[str, Any], encoder=None, registry=None) -> str | None:
    """Why ``spec``'s latents cannot be cached (None when they can).

    Without the built ``encoder`` only what the spec shows is checked (a factory that takes
    a checkpoint but was given none has random weights); with it, also its declarations.
    """
    name = spec["name"]
    random = f"encoder '{name}' has random weights (no checkpoint), so its latents depend on the seed"
    fixed = spec.get("checkpoint") or spec.get("pretrained")  # weights that do not depend on the seed
    if registry is not None and not fixed:
        params = registry.get("encoder", name, "model.encoder.name").parameters() or {}
        if "checkpoint" in params:
            return random
    if encoder is None:
        return None
    if getattr(encoder, "latent_shape", None) is None:
        return f"encoder '{name}' passes images through; there are no latents to cache"
    if not getattr(encoder, "cacheable", False):
        return f"encoder '{name}' is not cacheable (its output is not fixed by its parameters)"
    if not fixed and any(p.numel() for p in encoder.parameters()):
        return random
    return None


def _canonical(value: Any) -> str:
    return json.dumps(value, sort_keys=True, default=str)
