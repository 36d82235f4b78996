"""The hook reference (docs/hooks.md), generated from fer_core/hookspecs.py.

Every hook's exact signature (from ``inspect.signature``) and docstring, the
``register`` callable it receives, and for each kind the context arguments,
the conformance check and the ``fer plugin new`` kind. tests/test_hooks_doc.py
fails when docs/hooks.md differs from what this renders.

    python -m fer_core.hookdocs            # print the reference
    python -m fer_core.hookdocs --write    # rewrite docs/hooks.md
"""

from __future__ import annotations

import inspect
import sys
from collections.abc import Callable
from pathlib import Path

from fer_core import hookspecs
from fer_core.plugins import HOOKS
from fer_core.registry import CONTEXT

DOCS_PATH = Path(__file__).resolve().parent.parent / "docs" / "hooks.md"
KIND_OF_HOOK = {hook: kind for kind, hook in HOOKS.items()}


def hook_specs() -> dict[str, Callable]:
    """Name -> function of every hook specification in fer_core.hookspecs, in source order."""
    specs = [f for _, f in inspect.getmembers(hookspecs, inspect.isfunction)
             if getattr(f, f"{hookspecs.PROJECT}_spec", None) is not None]
    return {f.__name__: f for f in sorted(specs, key=lambda f: f.__code__.co_firstlineno)}


class _Text:
    """An annotation shown as written in the source (``Register``, not ``'Register'``)."""

    def __init__(self, text: str):
        self.text = text

    def __repr__(self) -> str:
        return self.text


def _shown(annotation: object) -> object:
    if annotation is inspect.Signature.empty:
        return annotation
    return _Text(annotation if isinstance(annotation, str) else inspect.formatannotation(annotation))


def signature_text(func: Callable, name: str | None = None) -> str:
    """``def name(params) -> return``, with annotations as written in the source."""
    sig = inspect.signature(func)
    params = [p.replace(annotation=_shown(p.annotation)) for p in sig.parameters.values()]
    sig = sig.replace(parameters=params, return_annotation=_shown(sig.return_annotation))
    return f"def {name or func.__name__}{sig}"


def _docstring(obj: object) -> str:
    return inspect.cleandoc(obj.__doc__ or "")


def render_hook_docs() -> str:
    specs = hook_specs()
    register_call = inspect.getattr_static(hookspecs.Register, "__call__")
    lines = [
        "# Hook reference",
        "",
        "<!-- Generated from fer_core/hookspecs.py by `python -m fer_core.hookdocs --write`; do not edit. -->",
        "",
        _docstring(hookspecs),
        "",
        "## The `register` callable",
        "",
        "```python",
        signature_text(register_call, "register").replace("(self, ", "("),
        "```",
        "",
        _docstring(hookspecs.Register),
        "",
        "## Hooks",
        "",
        "| hook | kind | context arguments | conformance check | new plugin |",
        "|---|---|---|---|---|",
    ]
    for name in specs:
        kind = KIND_OF_HOOK.get(name, "?")
        context = ", ".join(f"`{c}`" for c in CONTEXT.get(kind, ())) or "none"
        lines.append(f"| [`{name}`](#{name}) | {kind} | {context} | `fer_core.testing.check_{kind}` "
                     f"| `fer plugin new NAME --kind {kind}` |")
    for name, func in specs.items():
        kind = KIND_OF_HOOK.get(name, "?")
        lines += [
            "",
            f"### `{name}`",
            "",
            "```python",
            signature_text(func),
            "```",
            "",
            _docstring(func),
            "",
            f"fer-core passes {kind} factories the context arguments "
            f"{', '.join(f'`{c}`' for c in CONTEXT.get(kind, ())) or '(none)'} when their signature names them. "
            f"Test a component with `fer_core.testing.check_{kind}(name, params)`; start a plugin with "
            f"`fer plugin new NAME --kind {kind}`.",
        ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    text = render_hook_docs()
    if argv[:1] == ["--write"]:
        path = Path(argv[1]) if len(argv) > 1 else DOCS_PATH
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        print(f"wrote {path}")
    else:
        sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
