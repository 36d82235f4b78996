"""A deliberately imbalanced copy of the synthetic faces, for the loss/augment comparison of issue 9.

The training split of SOURCE is re-packed keeping, per class, the first ``fraction`` of its
samples (``--keep disgust=0.1 --keep fear=0.2``; classes not named keep everything); the
val and test splits are copied untouched, so the evaluation stays balanced. SOURCE is drawn
first (2800 faces at 48 px, seed 0) when it is missing.

    python benchmarks/imbalanced_synth.py                         # data/synth -> data/synth-imbalanced
    fer study fer_core/recipes/studies/focal-cutmix-synth.yaml
"""

from __future__ import annotations

import argparse
import math
import shutil
from pathlib import Path

from fer_core.data.pack import make_synth_dataset
from fer_core.data.shards import MANIFEST_NAME, SplitWriter, read_manifest, write_manifest
from fer_core.data.tarstream import tar_samples

DEFAULT_KEEP = {"disgust": 0.1, "fear": 0.2}


def make_imbalanced(source: Path, out: Path, keep: dict[str, float], shard_size: int = 1000) -> dict:
    manifest = read_manifest(source)
    classes = manifest["classes"]
    unknown = sorted(set(keep) - set(classes))
    if unknown:
        raise SystemExit(f"--keep: {', '.join(unknown)} not among the classes {', '.join(classes)}")
    train = manifest["splits"]["train"]
    quota = [math.ceil(train["class_counts"][c] * keep.get(c, 1.0)) for c in classes]
    taken = [0] * len(classes)
    out.mkdir(parents=True, exist_ok=True)
    with SplitWriter(out, "train", classes, shard_size) as writer:
        for shard in train["shards"]:
            for sample in tar_samples(source / shard):
                label = int(sample.pop("cls"))
                if taken[label] < quota[label]:
                    taken[label] += 1
                    key = sample.pop("__key__")
                    writer.write(key, label, sample)
    splits = {"train": writer.entry}
    for split, entry in manifest["splits"].items():
        if split != "train":
            for shard in entry["shards"]:
                shutil.copyfile(source / shard, out / shard)
            splits[split] = entry
    derived = {**manifest, "splits": splits,
               "note": f"train split of {source} re-packed keeping per class "
                       f"{', '.join(f'{c} {f:.0%}' for c, f in keep.items())}; val/test untouched"}
    write_manifest(out, derived)
    return derived


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", type=Path, default=Path("data/synth"))
    parser.add_argument("--out", type=Path, default=Path("data/synth-imbalanced"))
    parser.add_argument("--keep", action="append", metavar="CLASS=FRACTION",
                        help="per-class fraction of the training split to keep (default disgust=0.1, fear=0.2)")
    args = parser.parse_args()
    keep = dict(DEFAULT_KEEP) if not args.keep else {k: float(v) for k, v in (s.split("=", 1) for s in args.keep)}
    if not (args.source / MANIFEST_NAME).is_file():
        make_synth_dataset(args.source, n=2800, size=48, seed=0)
    manifest = make_imbalanced(args.source, args.out, keep)
    counts = manifest["splits"]["train"]["class_counts"]
    print(f"{args.out}: train {sum(counts.values())} samples: "
          + ", ".join(f"{c} {n}" for c, n in counts.items()))


if __name__ == "__main__":
    main()
