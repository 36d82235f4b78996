"""From a recipe's ``data`` section to loaders: roots, classes, synthetic data on demand."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from fer_core.data import synth
from fer_core.data.loader import Decoder, EpochLoader, ShardStream, SourceSplit
from fer_core.data.shards import MANIFEST_NAME, read_manifest
from fer_core.data.va import has_va
from fer_core.errors import DataError


def ensure_data(data: Mapping[str, Any], console=None) -> None:
    """Generate the synthetic set when ``data.synth`` is given and ``data.root`` is missing;
    a synthetic set already there must have been drawn with the same settings, and is drawn
    again when an older fer-core drew it (``synth.VERSION``: e.g. without valence/arousal)."""
    root = data.get("root")
    if not root or data.get("synth") is None:
        return
    stale = False
    if (Path(root) / MANIFEST_NAME).exists():
        check_synth_settings(root, data["synth"])
        stale = _older_synth(read_manifest(root))
        if not stale:
            return
    from fer_core.data.pack import make_synth_dataset

    if console is not None:
        why = "was drawn by an older fer-core" if stale else "is missing"
        console.print(f"[cyan]{root} {why}: drawing the synthetic data set first[/]")
    make_synth_dataset(root, **data["synth"], progress=console is not None, overwrite=stale)


def _older_synth(manifest: Mapping[str, Any]) -> bool:
    """Synthetic faces drawn before the current ``synth.VERSION`` (a real data set is never stale)."""
    return manifest.get("source_format") == "synth" and (manifest.get("synth") or {}).get("version", 1) < synth.VERSION


def check_synth_settings(root: str | Path, synth: Mapping[str, Any]) -> None:
    """A DataError when ``root`` holds synthetic faces drawn with other ``n``/``size``/``seed``."""
    manifest = read_manifest(root)
    if manifest.get("source_format") != "synth":
        return  # a real data set in its place: data.synth is only the fallback
    have = {"n": sum(split["count"] for split in manifest["splits"].values()),
            "size": manifest["image"]["size"][0], "seed": manifest.get("seed")}
    differ = [key for key in ("n", "size", "seed") if key in synth and synth[key] != have[key]]
    if differ:
        asked = ", ".join(f"{key}={synth[key]}" for key in differ)
        found = ", ".join(f"{key}={have[key]}" for key in differ)
        raise DataError(f"{root} holds synthetic faces drawn with {found}, but data.synth asks for {asked}; "
                        f"delete {root} to draw them again, or point data.root at another directory")


def source_roots(data: Mapping[str, Any]) -> list[tuple[Path, float]]:
    """(root, weight) of each source: ``data.sources``, else ``data.root`` with weight 1."""
    if not data.get("sources"):
        return [(Path(data["root"]), 1.0)]
    roots = []
    for i, source in enumerate(data["sources"]):
        weight = source.get("weight", 1.0)
        if isinstance(weight, bool) or not isinstance(weight, (int, float)) or weight < 0:
            raise DataError(f"data.sources[{i}].weight: expected a number >= 0, got {weight!r}")
        roots.append((Path(source["root"]), float(weight)))
    return roots


def resolve_classes(data: Mapping[str, Any]) -> list[str]:
    """The recipe's classes, or the first source's classes in manifest order."""
    if data.get("classes"):
        return list(data["classes"])
    root, _ = source_roots(data)[0]
    return list(read_manifest(root)["classes"])


def open_split(data: Mapping[str, Any], split: str, classes: list[str], *,
               roots: Sequence[tuple[Path, float]] | None = None) -> list[SourceSplit]:
    fraction = data["train_fraction"] if split == "train" else 1.0
    out = []
    for root, weight in roots or source_roots(data):
        manifest = read_manifest(root)
        if split not in manifest["splits"]:
            raise DataError(f"{root}: no '{split}' split (has {', '.join(manifest['splits'])}); "
                            f"pack it with a --val-split / --test-split")
        out.append(SourceSplit(root, manifest, split, classes, weight=weight, fraction=fraction))
    return out


def make_loader(data: Mapping[str, Any], split: str, classes: list[str], batch_size: int, *,
                train: bool, seed: int, augments: Sequence[torch.nn.Module] = (), rank: int = 0,
                world: int = 1, latent: bool = False, roots=None, num_workers: int | None = None,
                va: bool = False) -> EpochLoader:
    """The split's batches; with ``va`` their targets are ``{"label": ..., "va": float32 [B, 2]}``
    (every source must carry valence/arousal, else a DataError names it)."""
    sources = open_split(data, split, classes, roots=roots)
    if va:
        for source in sources:
            if not has_va(source.manifest):
                raise DataError(_no_va(source.root))
    decoder = Decoder(image_size=data["image_size"], channels=data["channels"], num_classes=len(classes),
                      soft_labels=data["soft_labels"], latent=latent, classes=tuple(classes), va=va)
    stream = ShardStream(sources, decoder, batch_size, train=train, seed=seed, augments=augments,
                         balance=data["balance"], shuffle_buffer=data["shuffle_buffer"], rank=rank, world=world)
    workers = data["num_workers"] if num_workers is None else num_workers
    return EpochLoader(stream, num_workers=workers)


def missing_va(data: Mapping[str, Any]) -> str | None:
    """None when every source of ``data`` carries valence/arousal (per its manifest, or because
    ``data.synth`` will draw it), else one line naming the first data set that does not.

    A source without a manifest yet is left to the data checks (``fer_core.preflight``)."""
    for root, _ in source_roots(data):
        if not (root / MANIFEST_NAME).is_file():
            continue
        manifest = read_manifest(root)
        if has_va(manifest):
            continue
        if _older_synth(manifest):
            if data.get("synth") is not None and data.get("root") and root == Path(data["root"]):
                continue  # `fer run` draws it again, with valence/arousal
            n = sum(split["count"] for split in manifest["splits"].values())
            return _no_va(root, f"synthetic faces drawn by an older fer-core; draw them again with `fer data synth "
                                f"{root} --n {n} --size {manifest['image']['size'][0]} --seed {manifest.get('seed', 0)} "
                                f"--overwrite`")
        return _no_va(root)
    return None


def _no_va(root: Path, hint: str | None = None) -> str:
    return (f"{root} has no valence/arousal (its {MANIFEST_NAME} lists no 'va'{'' if hint is None else ': ' + hint}); "
            f"tasks affect and expression+affect need data packed with va.json (AffectNet, or the synthetic faces)")


# -- cached latents -------------------------------------------------------------------------------------------
def find_latents(data: Mapping[str, Any], encoder_spec: Mapping[str, Any], root: str | Path | None = None,
                 *, registry=None) -> Path | None:
    """The latent shards of ``root`` (default ``data.root``) made by the recipe's encoder, or None.

    A root that is itself a latent directory must match (else a DataError says what it was made
    with); otherwise ``<root>/latents/<encoder>-<digest>/`` is used when it is complete and was
    made from the current version of ``root``.
    """
    from fer_core.data.latents import (default_latent_dir, describe, key_difference, key_of, latent_cache_key,
                                       manifest_sha256, same_key)

    root = Path(root if root is not None else data["root"])
    key = latent_cache_key(encoder_spec, data["image_size"], data["channels"], registry=_registry(registry))
    made = read_manifest(root).get("latent")
    if made:
        if not same_key(made, key):
            raise DataError(f"{root} holds latents of {describe(key_of(made))}, but the recipe asks for "
                            f"{describe(key)} (different {key_difference(made, key)}); encode "
                            f"{made.get('source')} with the recipe's encoder, or fix model.encoder / data")
        return root
    folder = default_latent_dir(root, key)
    if not (folder / MANIFEST_NAME).is_file():
        return None
    manifest = read_manifest(folder)
    cached = manifest.get("latent") or {}
    complete = all((folder / n).is_file() for e in manifest["splits"].values() for n in e["shards"])
    fresh = cached.get("source_manifest_sha256") == manifest_sha256(root)
    return folder if same_key(cached, key) and complete and fresh else None


def cached_latents(data: Mapping[str, Any], encoder_spec: Mapping[str, Any], encoder: torch.nn.Module, *,
                   frozen: bool, sample_augments: Sequence[torch.nn.Module] = (), batch_size: int = 64,
                   device: torch.device | str = "cpu", main: bool = True, barrier=None,
                   console=None) -> list[tuple[Path, float]] | None:
    """The roots (with weights) a run reads latents from instead of running its encoder, or None.

    Latents are read when the encoder is frozen and cacheable, no sample augment needs images,
    and every source has matching latents; with ``data.cache_latents`` the missing ones are
    encoded first (on the main process; the others wait at ``barrier``). A data root that holds
    only latents must be readable this way, else a DataError says why.
    """
    from fer_core.data.latents import default_latent_dir, latent_cache_key, uncacheable_reason

    roots = source_roots(data)
    image_augments = [a for a in sample_augments if "latent" not in getattr(a, "spaces", ("image",))]
    latent_only = [root for root, _ in roots if read_manifest(root).get("latent")]
    reason = uncacheable_reason(encoder_spec, encoder) if frozen else "the recipe trains its encoder"
    reason = reason or ("augment.sample transforms the images before the encoder" if image_augments else None)
    if latent_only:
        if reason or len(latent_only) < len(roots):
            why = reason or "other sources hold images"
            raise DataError(f"{latent_only[0]} holds cached latents, not images, and {why}; point data.root at "
                            f"the image shards it was made from")
        return [(find_latents(data, encoder_spec, root), weight) for root, weight in roots]
    if reason:
        if data.get("cache_latents") and console is not None and main:
            console.print(f"[yellow]note:[/] data.cache_latents is ignored: {reason}; the encoder runs on the fly",
                          highlight=False, soft_wrap=True)
        return None
    if data.get("cache_latents"):
        if main:
            from fer_core.data.encode import encode_dataset

            registry = _registry(None)
            for root, _ in roots:
                if find_latents(data, encoder_spec, root) is None:
                    folder = default_latent_dir(root, latent_cache_key(encoder_spec, data["image_size"],
                                                                       data["channels"], registry=registry))
                    if console is not None:
                        console.print(f"caching the latents of {root} in {folder}", highlight=False, soft_wrap=True)
                    try:
                        encode_dataset(root, folder, encoder_spec, batch_size=batch_size, device=device,
                                       image_size=data["image_size"], channels=data["channels"],
                                       progress=console is not None, workers=data.get("num_workers"),
                                       replace_stale=True, module=encoder, console=console)
                    except PermissionError:
                        raise DataError(f"cannot write latents under {root} (read-only); run `fer data encode "
                                        f"{root} OUT_DIR` and set data.root to OUT_DIR") from None
        if barrier is not None:
            barrier()
    found = [(find_latents(data, encoder_spec, root), weight) for root, weight in roots]
    return found if all(path is not None for path, _ in found) else None


def _registry(registry):
    if registry is not None:
        return registry
    from fer_core.plugins import get_registry

    return get_registry()
