"""Does `fer eval --by` find a group a model fails more often? And does `fer calibrate` lower the ECE?

Two synthetic sets are drawn with the same seed, so they hold the same faces, expressions
and splits and differ only in skin tone: ``rare`` draws the dark band for ``--rare-share`` of
the faces (`fer data synth --rare-skin-tone dark`), ``balanced`` draws the three bands equally.
A quickstart-style recipe (resnet10t, flip augment) is trained on each; then

* each run is evaluated ``--by skin_tone`` on its own test split, and the run trained on
  ``rare`` also on the balanced test split, where the dark group is large;
* each run is calibrated on its validation split (`fer calibrate`), ECE before and after.

    python benchmarks/fairness_synth.py --work /tmp/fairness     # 7000 faces at 48 px, 6 epochs
    python benchmarks/fairness_synth.py --n 4200 --size 32 --epochs 5 --rare-share 0.02 --workers 0
    python benchmarks/fairness_synth.py --n 2800 --size 32 --epochs 4 --rare-share 0.02 --workers 0

Results go to WORK/results.md and WORK/results.json; every run keeps its reports under
WORK/runs/<name>/<timestamp>/eval/.

Measured with the second command on the earlier generator, which drew creases, lips and
nostrils as multiplicative shades of the skin colour (40 minutes on 2 CPU cores shared with
other jobs, load average 10 to 15; not a quiet-machine figure):

| evaluation | accuracy per skin tone | largest gap, 95 % simultaneous interval |
|---|---|---|
| trained on rare, own test split | light 0.662 (n=290), medium 0.633 (n=324), dark 0.125 (n=16) | 0.537 [0.364, 0.710] |
| trained on rare, balanced test split | light 0.713 (188), medium 0.571 (203), dark 0.335 (239) | 0.378 [0.269, 0.487] |
| trained on balanced, own test split | light 0.553 (188), medium 0.483 (203), dark 0.335 (239) | 0.218 [0.106, 0.331] |

There the expression marks' contrast shrank with the skin's luminance, so the model trained
on balanced data was worse on dark faces too. The generator now draws lines, lids, nose
lines, lips and brows a fixed number of grey levels below the skin. Measured with the third
command (844 s, 2 CPU cores shared with other jobs, load average 6.2 at the start and 4.5 at
the end, up to about 9.5 between; not a quiet-machine figure; 4 epochs leave the models
under-trained, so accuracies are low):

| evaluation | accuracy per skin tone | largest gap, 95 % simultaneous interval |
|---|---|---|
| trained on rare, own test split | light 0.392 (n=199), medium 0.431 (n=211), dark 0.100 (n=10) | 0.331 [0.117, 0.545] |
| trained on rare, balanced test split | light 0.451 (133), medium 0.342 (149), dark 0.217 (138) | 0.234 [0.101, 0.367] |
| trained on balanced, own test split | light 0.286 (133), medium 0.309 (149), dark 0.203 (138) | 0.106 [-0.019, 0.231] |

The under-represented dark faces are found with an interval that excludes zero; trained on
balanced data, the gap's interval includes zero (the dark group's point estimate is still
the lowest). An intermediate version that still drew brows in the hair colour (far more
contrast on light skin) left the balanced gap at 0.144 [0.011, 0.276] at the same scale.
Temperature scaling on the validation splits: ECE 0.0908 -> 0.0333 (T 0.705) and 0.0611 ->
0.0388 (T 0.718) in the 40-minute run, accuracy unchanged; in the 844 s run 0.0716 -> 0.0573
(T 0.653) and 0.0501 -> 0.0506 (T 0.776), the NLL lower in both.
"""

from __future__ import annotations

import argparse
import io
import json
import time
from pathlib import Path

from rich.console import Console

from fer_core.assess import calibrate_run, eval_dir, evaluate_run
from fer_core.data.pack import make_synth_dataset
from fer_core.inference import load_trained
from fer_core.plugins import get_registry
from fer_core.recipe import load_recipe
from fer_core.train import run

RECIPE = """
name: {name}
seed: 0
data: {{root: {root}, image_size: {size}, channels: 3, num_workers: {workers}}}
model:
  backbone: {{name: timm, model: resnet10t}}
  head: {{name: linear, dropout: 0.1}}
loss: {{name: cross_entropy, label_smoothing: 0.05}}
augment: {{sample: [{{name: hflip, p: 0.5}}]}}
optim: {{name: adamw, lr: 2.0e-3, weight_decay: 0.05}}
schedule: {{name: cosine, warmup_epochs: 1}}
train: {{epochs: {epochs}, batch_size: 64}}
eval: {{metric: accuracy}}
"""


def train(work: Path, name: str, root: Path, args) -> Path:
    recipe_path = work / f"{name}.yaml"
    recipe_path.write_text(RECIPE.format(name=name, root=root, size=args.size, epochs=args.epochs,
                                         workers=args.workers))
    recipe = load_recipe(recipe_path, registry=get_registry())
    return run(recipe, out=str(work / "runs"), console=Console(file=io.StringIO()))


def gap_line(label: str, report: dict) -> str:
    groups = report["groups"]["skin_tone"]
    rows = ", ".join(f"{r['group']} {r['accuracy']:.3f} (n={r['support']})" for r in groups["groups"])
    gap = groups["gap"]
    verdict = "excludes 0" if gap["excludes_zero"] else "includes 0"
    return (f"| {label} | {rows} | {gap['best']} − {gap['worst']} = {gap['value']:.3f} | "
            f"[{gap['interval'][0]:.3f}, {gap['interval'][1]:.3f}] {verdict} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", type=Path, default=Path("/tmp/fer-fairness"))
    parser.add_argument("--n", type=int, default=7000)
    parser.add_argument("--size", type=int, default=48)
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--rare-share", type=float, default=0.04)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    work = args.work
    work.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    roots = {"rare": work / "rare", "balanced": work / "balanced"}
    for name, root in roots.items():
        if not (root / "dataset.json").is_file():
            make_synth_dataset(root, n=args.n, size=args.size, seed=0, progress=False,
                               rare_skin_tone="dark" if name == "rare" else None, rare_share=args.rare_share)
    runs = {name: train(work, name, root, args) for name, root in roots.items()}
    results, lines = {"args": {k: str(v) for k, v in vars(args).items()}}, []
    evaluations = [("rare", None, "trained on rare, its own test split"),
                   ("rare", roots["balanced"], "trained on rare, balanced test split"),
                   ("balanced", None, "trained on balanced, its own test split")]
    for name, data, label in evaluations:
        trained = load_trained(runs[name])
        report = evaluate_run(trained, data_dir=data, by=["skin_tone"], out=eval_dir(runs[name], "test", data))
        results[label] = {"accuracy": report["accuracy"], "ece": report["ece"], "skin_tone": report["groups"]["skin_tone"]}
        lines.append(gap_line(label, report))
    calibration = []
    for name in runs:
        record, _ = calibrate_run(load_trained(runs[name]))
        results[f"calibration {name}"] = record
        calibration.append(f"| {name} | {record['temperature']:.3f} | {record['before']['ece']:.4f} | "
                           f"{record['after']['ece']:.4f} | {record['before']['nll']:.4f} | "
                           f"{record['after']['nll']:.4f} | {record['before']['accuracy']:.4f} |")
    seconds = time.perf_counter() - started
    results["seconds"] = seconds
    text = "\n".join([
        f"# Skin tone gap and calibration on synthetic faces ({args.n} faces, {args.size} px, "
        f"{args.epochs} epochs, dark share {args.rare_share} in rare; {seconds:.0f} s)", "",
        "| evaluation | accuracy per skin tone | largest gap | 95% simultaneous interval |", "|---|---|---|---|",
        *lines, "", "Temperature scaling on the validation split:", "",
        "| run | T | ECE before | ECE after | NLL before | NLL after | accuracy |", "|---|---|---|---|---|---|---|",
        *calibration, ""])
    (work / "results.md").write_text(text)
    (work / "results.json").write_text(json.dumps(results, indent=2, default=str))
    print(text)


if __name__ == "__main__":
    main()
