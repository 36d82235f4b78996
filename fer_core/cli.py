"""The ``fer`` command: click commands, rich output, one-line errors."""

from __future__ import annotations

import contextlib
import json
import os
import sys
import time
from pathlib import Path

import click
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from fer_core import __version__
from fer_core.constraints import clip
from fer_core.errors import FerError
from fer_core.run_status import FAILURE_FILE, record_failure, started_run

console = Console()
err_console = Console(stderr=True)


class FerGroup(click.Group):
    """Turns FerError (and any unexpected exception) into one line on stderr, exit 2."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except (click.exceptions.Exit, click.ClickException, click.Abort):
            raise
        except KeyboardInterrupt:
            err_console.print("[red]interrupted[/]")
            sys.exit(130)
        except Exception as exc:
            if ctx.obj and ctx.obj.get("debug"):
                raise
            missing = _missing_torch(exc)
            message = missing or str(exc)
            if "\n" in message:  # one line, whatever the exception held
                message = " ".join(message.split())
            if not isinstance(exc, FerError) and not missing:
                message = (f"internal error: {type(exc).__name__}: {clip(message, 200)} "
                           f"(rerun with --debug for the traceback)")
            err_console.print(f"[bold red]error:[/] {escape(message)}", highlight=False, soft_wrap=True)
            sys.exit(2)


# fer-core's `torch` extra: a torch-free install (`fer-core[infer]`) predicts and serves .onnx models only.
TORCH_STACK = {"torch", "torchvision", "timm", "torchmetrics", "webdataset", "safetensors", "matplotlib", "tensorboard"}


def _missing_torch(exc: Exception) -> str | None:
    """The extra to install when ``exc`` is (or was caused by, e.g. a component that cannot load) a missing torch."""
    cause = exc if isinstance(exc, ModuleNotFoundError) else exc.__cause__
    if isinstance(cause, ModuleNotFoundError) and (cause.name or "").split(".")[0] in TORCH_STACK:
        return (f"this command needs PyTorch and fer-core's training stack ({cause.name} is not installed): "
                f"pip install 'fer-core[torch]'")
    return None


@click.group(cls=FerGroup)
@click.version_option(__version__, prog_name="fer")
@click.option("--debug", is_flag=True, help="Show tracebacks instead of one-line errors.")
@click.pass_context
def main(ctx: click.Context, debug: bool) -> None:
    """Facial expression recognition: recipes in, trained and evaluated models out."""
    ctx.obj = {"debug": debug}


@main.command()
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def plugins(as_json: bool) -> None:
    """List plugins, their status, import cost and the components they provide."""
    from fer_core.plugins import get_host  # torch-free: `fer plugins` must stay instant

    host = get_host()
    warnings = [w for p in host.plugins for w in p.warnings]
    if warnings and host.strict:
        raise FerError(f"{warnings[0]} (FER_STRICT_PLUGINS=1 makes this an error)")
    if as_json:
        click.echo(json.dumps([p.as_dict() for p in host.plugins], indent=2))
    else:
        table = Table(title="fer plugins", show_lines=False)
        for column in ("plugin", "distribution", "version", "status", "import", "components"):
            table.add_column(column)
        for p in host.plugins:
            status = "[green]loaded[/]" if p.status == "loaded" else f"[red]{p.status}[/]"
            if p.error:
                status += f"\n[red]{escape(p.error)}[/]"
            comps = "\n".join(f"{c.kind} [bold]{escape(c.name)}[/]: {escape(c.summary)}" for c in p.components)
            summary = f"\n[dim]{escape(p.summary)}[/]" if p.summary else ""
            took = "" if p.import_s is None else f"{p.import_s * 1000:.0f} ms"
            table.add_row(escape(p.name), escape(p.dist) + summary, escape(p.version), status, took, comps)
        console.print(table)
    for warning in warnings:
        err_console.print(f"[yellow]warning:[/] {escape(warning)}", highlight=False, soft_wrap=True)


@main.group()
def recipe() -> None:
    """List, copy, check and show recipes; RECIPE is a file or a packaged name (`fer recipe list`)."""


def _load(path: str, overrides: tuple[str, ...]) -> dict:
    from fer_core.plugins import get_registry
    from fer_core.recipe import load_recipe

    return load_recipe(path, overrides, registry=get_registry())


@recipe.command("check")
@click.argument("path", type=click.Path())
@click.option("-s", "--set", "overrides", multiple=True, metavar="KEY=VALUE", help="Override a recipe key.")
@click.option("--no-build", is_flag=True, help="Check keys, values and components only: no data, no dry build.")
def recipe_check(path: str, overrides: tuple[str, ...], no_build: bool) -> None:
    """Validate RECIPE: values, components, data and a dry build (exit 0, or 2 with a one-line error)."""
    resolved = _load(path, overrides)
    model = resolved["model"]
    parts = " -> ".join(model[k]["name"] for k in ("encoder", "backbone", "head") if k in model)
    checked = "" if no_build else f" ({_preflight(resolved)})"
    console.print(f"[green]ok[/] {escape(resolved['name'])}: {escape(parts)}{escape(checked)}", highlight=False,
                  soft_wrap=True)


def _preflight(resolved: dict) -> str:
    """Data and dry build, before any run directory exists (see fer_core.preflight)."""
    from fer_core.plugins import get_registry
    from fer_core.preflight import check_recipe

    return check_recipe(resolved, get_registry())


@recipe.command("docs")
def recipe_docs() -> None:
    """Print the recipe reference (docs/recipes.md), generated from the schema."""
    from fer_core.recipe_docs import render

    click.echo(render(), nl=False)


@recipe.command("show")
@click.argument("path", type=click.Path())
@click.option("-s", "--set", "overrides", multiple=True, metavar="KEY=VALUE", help="Override a recipe key.")
def recipe_show(path: str, overrides: tuple[str, ...]) -> None:
    """Print the fully resolved RECIPE as YAML."""
    from fer_core.recipe import dump

    click.echo(dump(_load(path, overrides)), nl=False)


@main.command("run")
@click.argument("recipe_path", metavar="RECIPE", type=click.Path(), required=False)
@click.option("-s", "--set", "overrides", multiple=True, metavar="KEY=VALUE", help="Override a recipe key.")
@click.option("--resume", type=click.Path(exists=True, file_okay=False), help="Continue the run in RUN_DIR exactly.")
@click.option("--out", type=click.Path(file_okay=False), help="Parent directory of runs (default: output.dir).")
@click.option("--keep", type=int, help="Also keep the last N epoch checkpoints.")
@click.option("--nproc", type=int, default=1, show_default=True, help="Train with N processes (DDP via torchrun).")
def run_command(recipe_path, overrides, resume, out, keep, nproc) -> None:
    """Train RECIPE, evaluate it and write a run directory."""
    if nproc > 1:
        from fer_core.launch import launch

        sys.exit(launch(nproc, sys.argv[1:]))
    from fer_core.train import run  # here: `fer plugins` must not import torch

    if resume:
        with _failure_recorded(resume=resume):
            resume_or_restart(resume, run)
        return
    if not recipe_path:
        raise FerError("fer run needs a RECIPE file (or --resume RUN_DIR)")
    resolved = _load(recipe_path, overrides + ((f"train.keep={keep}",) if keep is not None else ()))
    _preflight(resolved)
    with _failure_recorded(parent=Path(out or resolved["output"]["dir"]) / resolved["name"]):
        run(resolved, out=out)


@contextlib.contextmanager
def _failure_recorded(resume: str | None = None, parent: Path | None = None):
    """A run that stops on an error is marked crashed in its directory (`fer compare` shows it)."""
    started = time.time()
    if resume:
        (Path(resume) / FAILURE_FILE).unlink(missing_ok=True)  # running again: no longer crashed
    try:
        yield
    except Exception as exc:
        run_dir = Path(resume) if resume else started_run(parent, started)
        if run_dir is not None and run_dir.is_dir():
            message = str(exc).splitlines()[0] if str(exc) else ""
            record_failure(run_dir, message if isinstance(exc, FerError) else f"{type(exc).__name__}: {message}")
        raise


def resume_or_restart(resume: str, run) -> None:
    """Continue RUN_DIR; a run killed before its first checkpoint is removed and started over."""
    from fer_core import preflight, providers
    from fer_core.plugins import get_registry
    from fer_core.recipe import validate_components
    from fer_core.runs import load_checkpoint

    recipe_file = preflight.unstarted_run(resume)
    if recipe_file is not None and int(os.environ.get("WORLD_SIZE", "1")) > 1:  # one process may delete it
        raise FerError(f"{resume} stopped before its first checkpoint; start it again with "
                       f"`fer run {recipe_file} --nproc N` (it holds nothing to resume)")
    if recipe_file is not None:
        resolved = _load(str(recipe_file), ())
        _preflight(resolved)
        preflight.remove_unstarted_run(resume)
        err_console.print(f"[yellow]{escape(resume)} stopped before its first checkpoint: removed it and "
                          f"starting the run over from its recipe[/]", highlight=False, soft_wrap=True)
        run(resolved, out=str(Path(resume).parent.parent))
        return
    state = load_checkpoint(Path(resume) / "checkpoints" / "last.pt")
    with providers.recorded(state.get("versions")):  # a missing plugin is named with its version
        validate_components(state["recipe"], get_registry())
    run(None, resume=resume)


@main.command("eval")
@click.argument("run_or_checkpoint", type=click.Path(exists=True))
@click.option("--data", "data_dir", type=click.Path(exists=True, file_okay=False), help="Evaluate on another packed data set.")
@click.option("--split", default="test", show_default=True, help="Split to evaluate.")
@click.option("--tta", type=click.Choice(["none", "flip"]), help="Test-time augmentation  [default: the recipe's eval.tta].")
@click.option("--by", "by", multiple=True, metavar="ATTRIBUTE",
              help="Also score each group of this per-sample attribute (repeatable; `fer data info` lists them).")
@click.option("--bootstrap", "resamples", default=2000, show_default=True, type=click.IntRange(min=100),
              help="Resamples of the bootstrap interval of the largest group gap.")
@click.option("--seed", default=0, show_default=True, help="Seed of the bootstrap.")
@click.option("--min-support", default=10, show_default=True, type=click.IntRange(min=1),
              help="Groups with fewer samples are listed but left out of the largest gap.")
@click.option("--out", type=click.Path(file_okay=False), help="Report folder  [default: RUN/eval/<split>[-<data dir>]]")
@click.option("--json", "as_json", is_flag=True, help="Print the metrics as JSON.")
def eval_command(run_or_checkpoint, data_dir, split, tta, by, resamples, seed, min_support, out, as_json) -> None:
    """Evaluate a trained run (its best checkpoint) on a split; write the report into the run."""
    import torch  # these imports are here: `fer plugins` and `fer --help` must not import torch

    from fer_core.affect_report import affect_table
    from fer_core.assess import eval_dir, evaluate_run
    from fer_core.evaluate import report_table
    from fer_core.fairness import group_table
    from fer_core.inference import load_trained

    device = "cuda" if torch.cuda.is_available() else "cpu"
    trained = load_trained(run_or_checkpoint, device)
    tta, origin = (trained.recipe["eval"]["tta"], "the recipe's eval.tta") if tta is None else (tta, "--tta")
    tta = None if tta == "none" else tta
    out = out or eval_dir(run_or_checkpoint, split, data_dir)
    report = evaluate_run(trained, data_dir=data_dir, split=split, tta=tta, by=by, resamples=resamples, seed=seed,
                          min_support=min_support, out=out, device=device)
    if as_json:
        click.echo(json.dumps({**report, "tta": tta}, indent=2))
        return
    console.print(f"test-time augmentation: {tta or 'none'} ({origin})", highlight=False)
    if "confusion" in report:  # a model that classifies (valence/arousal-only models have no classes)
        console.print(report_table(report))
        console.print(f"expected calibration error: {report['ece']:.4f}"
                      + (f" ({report['calibrated']['ece']:.4f} with temperature {trained.temperature:.3f})"
                         if "calibrated" in report else ""), highlight=False)
    if "affect" in report:
        console.print(affect_table(report))
    for attribute, groups in report["groups"].items():
        console.print(group_table(attribute, groups))
    if out is not None:
        console.print(f"report: {Path(out) / 'report.md'}", highlight=False, soft_wrap=True)


@main.command("predict")
@click.argument("run_or_checkpoint", metavar="RUN_CHECKPOINT_OR_ONNX", type=click.Path(exists=True))
@click.argument("images", nargs=-1, required=True, type=click.Path())
@click.option("--top-k", default=3, show_default=True, help="Probabilities to show per image or face.")
@click.option("--batch-size", default=64, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print JSON lines, one per image (faces: box, landmarks, label).")
@click.option("--detect/--no-detect", default=None,
              help="Find, align and classify every face (--detect), or classify whole images (--no-detect)  "
                   "[default: detect when the run was trained on `fer data pack --detect` data]")
@click.option("--detector", default=None, help="Registered face detector (see `fer plugins`)  [default: the run's]")
@click.option("--margin", type=click.FloatRange(0, 2), default=None,
              help="Alignment margin, a fraction of the face per side  [default: the run's, else 0.1]")
@click.option("--draw", type=click.Path(), default=None,
              help="Write the photo (or video) with boxes and labels to this file (a folder for several inputs).")
@click.option("--every", type=click.IntRange(min=1), default=None, help="Video: classify every Nth frame.")
@click.option("--fps", type=click.FloatRange(min=0, min_open=True), default=None,
              help="Video: classify this many frames per second  [default: 5 unless --every].")
@click.option("--out", type=click.Path(file_okay=False), default=None,
              help="Video: folder for frames.csv, frames.json and timeline.png  [default: <video>.faces/]")
def predict_command(run_or_checkpoint, images, top_k, batch_size, as_json, detect, detector, margin, draw, every,
                    fps, out) -> None:
    """Predict the expression in each IMAGE (photo or video) with a run, checkpoint or exported .onnx model."""
    from fer_core.faces.commands import predict

    predict(run_or_checkpoint, list(images), detect=detect, detector=detector, margin=margin, top_k=top_k,
            batch_size=batch_size, as_json=as_json, draw=draw, every=every, fps=fps, out=out, console=console,
            err_console=err_console)


@main.command("compare")
@click.argument("runs", nargs=-1, required=True, type=click.Path(exists=True, file_okay=False))
@click.option("--metric", default="accuracy", show_default=True,
              type=click.Choice(["accuracy", "f1_macro", "f1_weighted", "ccc_mean", "valence_ccc", "arousal_ccc",
                                 "valence_rmse", "arousal_rmse"]),
              help="Sort by this test metric (RMSE: lowest first; valence/arousal metrics for affect runs).")
@click.option("--format", "fmt", type=click.Choice(["table", "md", "csv", "json"]),
              help="Print (or write) Markdown, CSV or JSON instead of a table  [default: table, or --output's suffix].")
@click.option("--output", "-o", type=click.Path(dir_okay=False), help="Write the comparison to this file.")
@click.option("--worst-group", metavar="ATTRIBUTE", default=None,
              help="Add the worst group's test accuracy from each run's `fer eval --by ATTRIBUTE` report.")
def compare_command(runs, metric, fmt, output, worst_group) -> None:
    """Compare runs in one table, with their status and the recipe keys that differ."""
    from fer_core.compare import compare_rows, compare_table, compare_text, output_format

    fmt = output_format(fmt, output)
    if fmt == "table":
        console.print(compare_table(runs, metric, worst_group))
        return
    text = compare_text(*compare_rows(runs, metric, worst_group), fmt, metric)
    if not output:
        click.echo(text, nl=False)
        return
    Path(output).write_text(text)
    console.print(f"wrote {output}", highlight=False)


def _add_subcommands() -> None:
    """Attach command groups that live beside their code."""
    from fer_core.data.cli import data
    from fer_core.scaffold.cli import plugin
    from fer_core.serve.cli import export, serve
    from fer_core.generate import generate
    from fer_core.recipes.cli import recipe_copy, recipe_list
    from fer_core.study import study
    from fer_core.eval_cli import calibrate, crosseval

    main.add_command(data)
    main.add_command(plugin)
    main.add_command(serve)
    main.add_command(export)
    main.add_command(study)
    main.add_command(generate)
    recipe.add_command(recipe_list)
    recipe.add_command(recipe_copy)
    main.add_command(calibrate)
    main.add_command(crosseval)


_add_subcommands()

if __name__ == "__main__":
    main()
