"""``fer calibrate`` and ``fer crosseval``; torch loads inside the commands, so that ``fer --help`` stays instant."""

from __future__ import annotations

from pathlib import Path

import click
from rich.console import Console
from rich.table import Table


def _device() -> str:
    import torch  # here, so that `fer --help` does not import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


@click.command("calibrate")
@click.argument("run_or_checkpoint", type=click.Path(exists=True))
@click.option("--split", default="val", show_default=True, help="Split to fit the temperature on.")
@click.option("--data", "data_dir", type=click.Path(exists=True, file_okay=False),
              help="Fit on this packed data set instead of the run's.")
def calibrate(run_or_checkpoint, split, data_dir) -> None:
    """Fit temperature scaling on the validation split and store it in the run.

    `fer predict`, `fer serve` and `fer export` then divide the logits by the temperature
    (predicted labels never change, only how confident they are); writes RUN/calibration.json
    and RUN/calibration.png (reliability before and after).
    """
    from fer_core.assess import calibrate_run
    from fer_core.inference import load_trained

    device = _device()
    record, path = calibrate_run(load_trained(run_or_checkpoint, device), data_dir=data_dir, split=split,
                                 device=device)
    table = Table(title=f"temperature {record['temperature']:.4f} fitted on {record['fitted_on']['samples']} "
                        f"{split} samples")
    for column in ("", "ECE", "NLL", "accuracy"):
        table.add_column(column, justify="left" if not column else "right")
    for name in ("before", "after"):
        values = record[name]
        table.add_row(name, f"{values['ece']:.4f}", f"{values['nll']:.4f}", f"{values['accuracy']:.4f}")
    console = Console()
    console.print(table)
    console.print(f"stored in {path}", highlight=False, soft_wrap=True)


@click.command("crosseval")
@click.argument("runs", nargs=-1, required=True, type=click.Path(exists=True))
@click.option("--data", "data_dirs", multiple=True, required=True, type=click.Path(exists=True, file_okay=False),
              help="A packed data set to evaluate every run on (repeatable).")
@click.option("--split", default="test", show_default=True, help="Split of each data set.")
@click.option("--tta", type=click.Choice(["flip"]), help="Test-time augmentation.")
@click.option("--out", type=click.Path(file_okay=False), default="runs/crosseval", show_default=True,
              help="Folder for results.md, results.csv and results.json.")
def crosseval(runs, data_dirs, split, tta, out) -> None:
    """Evaluate every RUN on every --data set: one table of runs x data sets, on the classes they share."""
    from fer_core.crosseval import crosseval as cross_evaluate

    err = Console(stderr=True)
    cells = cross_evaluate(runs, data_dirs, split=split, tta=tta, out=out, device=_device(),
                           progress=lambda text: err.print(f"evaluating {text}", highlight=False, soft_wrap=True))
    table = Table(title=f"accuracy / macro F1 on shared classes ({split})")
    table.add_column("run")
    for data_dir in data_dirs:
        table.add_column(str(data_dir), justify="right")
    for run in runs:
        row = [c for c in cells if c["run_dir"] == str(run)]
        table.add_row(f"{row[0]['run']}\n{run}", *(f"{c['accuracy']:.4f} / {c['f1_macro']:.4f}" for c in row))
    console = Console()
    console.print(table)
    console.print(f"written: {Path(out) / 'results.md'} (.csv, .json)", highlight=False, soft_wrap=True)
