"""The ``fer`` command: click commands, rich output, one-line errors."""

from __future__ import annotations

import json
import sys

import click
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from fer_core import __version__
from fer_core.errors import FerError

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
            message = str(exc) if isinstance(exc, FerError) else f"internal error: {type(exc).__name__}: {exc} (rerun with --debug for the traceback)"
            err_console.print(f"[bold red]error:[/] {escape(message)}", highlight=False, soft_wrap=True)
            sys.exit(2)


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
    """List plugins, their status and the components they provide."""
    from fer_core.plugins import get_host

    host = get_host()
    if as_json:
        click.echo(json.dumps([p.as_dict() for p in host.plugins], indent=2))
        return
    table = Table(title="fer plugins", show_lines=False)
    for column in ("plugin", "distribution", "version", "status", "components"):
        table.add_column(column)
    for p in host.plugins:
        status = "[green]loaded[/]" if p.status == "loaded" else f"[red]{p.status}[/]"
        if p.error:
            status += f"\n[red]{escape(p.error)}[/]"
        comps = "\n".join(f"{c.kind} [bold]{escape(c.name)}[/]: {escape(c.summary)}" for c in p.components)
        table.add_row(escape(p.name), escape(p.dist), escape(p.version), status, comps)
    console.print(table)


@main.group()
def recipe() -> None:
    """Check and show recipes."""


def _load(path: str, overrides: tuple[str, ...]) -> dict:
    from fer_core.plugins import get_registry
    from fer_core.recipe import load_recipe

    return load_recipe(path, overrides, registry=get_registry())


@recipe.command("check")
@click.argument("path", type=click.Path())
@click.option("-s", "--set", "overrides", multiple=True, metavar="KEY=VALUE", help="Override a recipe key.")
def recipe_check(path: str, overrides: tuple[str, ...]) -> None:
    """Validate RECIPE (exit 0 when valid, 2 with a one-line error otherwise)."""
    resolved = _load(path, overrides)
    model = resolved["model"]
    parts = " -> ".join(model[k]["name"] for k in ("encoder", "backbone", "head") if k in model)
    console.print(f"[green]ok[/] {escape(resolved['name'])}: {escape(parts)}", highlight=False)


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
        run(None, resume=resume)
        return
    if not recipe_path:
        raise FerError("fer run needs a RECIPE file (or --resume RUN_DIR)")
    run(_load(recipe_path, overrides + ((f"train.keep={keep}",) if keep is not None else ())), out=out)


@main.command("eval")
@click.argument("run_or_checkpoint", type=click.Path(exists=True))
@click.option("--data", "data_dir", type=click.Path(exists=True, file_okay=False), help="Evaluate on another packed data set.")
@click.option("--split", default="test", show_default=True, help="Split to evaluate.")
@click.option("--tta", type=click.Choice(["none", "flip"]), help="Test-time augmentation  [default: the recipe's eval.tta].")
@click.option("--json", "as_json", is_flag=True, help="Print the metrics as JSON.")
def eval_command(run_or_checkpoint, data_dir, split, tta, as_json) -> None:
    """Evaluate a trained run (its best checkpoint) on a split."""
    import torch  # these imports are here: `fer plugins` and `fer --help` must not import torch

    from fer_core.data.sources import cached_latents, make_loader
    from fer_core.evaluate import evaluate, report_table
    from fer_core.inference import load_trained

    device = "cuda" if torch.cuda.is_available() else "cpu"
    trained = load_trained(run_or_checkpoint, device)
    data = dict(trained.recipe["data"])
    if data_dir:
        data.update(root=data_dir, sources=None)
    latents = cached_latents(data, trained.recipe["model"]["encoder"], trained.model.encoder,
                             frozen=trained.model.frozen.get("encoder", False), device=device)
    loader = make_loader(data, split, trained.classes, trained.recipe["eval"]["batch_size"], train=False,
                         seed=trained.recipe["seed"], latent=latents is not None, roots=latents)
    tta, origin = (trained.recipe["eval"]["tta"], "the recipe's eval.tta") if tta is None else (tta, "--tta")
    tta = None if tta == "none" or latents is not None else tta  # latents are not images to flip
    result = evaluate(trained.model, loader, len(trained.classes), torch.device(device),
                      encoded=latents is not None, tta=tta)
    if as_json:
        click.echo(json.dumps({"checkpoint": str(trained.checkpoint), "split": split, "tta": tta, **result}, indent=2))
        return
    console.print(f"test-time augmentation: {tta or 'none'} ({origin})", highlight=False)
    console.print(report_table({"recipe": trained.recipe["name"], "split": split, "classes": trained.classes, **result}))


@main.command("predict")
@click.argument("run_or_checkpoint", metavar="RUN_CHECKPOINT_OR_ONNX", type=click.Path(exists=True))
@click.argument("images", nargs=-1, required=True, type=click.Path())
@click.option("--top-k", default=3, show_default=True, help="Probabilities to show per image.")
@click.option("--batch-size", default=64, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print JSON lines, one per image.")
def predict_command(run_or_checkpoint, images, top_k, batch_size, as_json) -> None:
    """Predict the expression of each IMAGE file with a run, checkpoint or exported .onnx model."""
    from fer_core.predictor import load_predictor, predict_files

    predictor = load_predictor(run_or_checkpoint)
    results = predict_files(predictor, list(images), batch_size=batch_size, top_k=top_k)
    if as_json:
        for r in results:
            click.echo(json.dumps(r))
        return
    table = Table(title=f"{predictor.name} predictions")
    for column in ("image", "label", "confidence", f"top {top_k}"):
        table.add_column(column)
    for r in results:
        others = ", ".join(f"{t['label']} {t['probability']:.2f}" for t in r["top_k"])
        table.add_row(r["image"], r["label"], f"{r['confidence']:.3f}", others)
    console.print(table)


@main.command("compare")
@click.argument("runs", nargs=-1, required=True, type=click.Path(exists=True, file_okay=False))
@click.option("--metric", default="accuracy", show_default=True,
              type=click.Choice(["accuracy", "f1_macro", "f1_weighted"]), help="Sort by this test metric.")
def compare_command(runs, metric) -> None:
    """Compare finished runs in one table, with the recipe keys that differ."""
    from fer_core.compare import compare_table

    console.print(compare_table(runs, metric))


def _add_subcommands() -> None:
    """Attach command groups that live beside their code."""
    from fer_core.data.cli import data
    from fer_core.scaffold.cli import plugin
    from fer_core.serve.cli import export, serve
    from fer_core.generate import generate
    from fer_core.study import study

    main.add_command(data)
    main.add_command(plugin)
    main.add_command(serve)
    main.add_command(export)
    main.add_command(study)
    main.add_command(generate)


_add_subcommands()

if __name__ == "__main__":
    main()
