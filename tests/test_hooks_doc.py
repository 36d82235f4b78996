"""Every hook is documented with its exact signature, and every hook has a test.

docs/hooks.md is generated from fer_core/hookspecs.py (``python -m fer_core.hookdocs
--write``). The first test compares the file with a fresh rendering; the second
reads the file independently of the renderer and checks that each hook has a
section whose signature is ``inspect.signature`` of the spec, with its docstring.

"A hook has a test" means: some test in tests/ loads a plugin that implements the
hook (a ``def register_<kinds>(register)`` in its source), and the author kit
supports the kind end to end (a ``fer_core.testing.check_<kind>`` conformance
check and a ``fer plugin new --kind <kind>`` example, both exercised by
tests/test_conformance.py and tests/test_plugin_new.py). A new hookspec fails here
until all of that exists.
"""

from __future__ import annotations

import inspect
import re
from pathlib import Path

import pytest

from fer_core import hookspecs
from fer_core.hookdocs import DOCS_PATH, KIND_OF_HOOK, hook_specs, render_hook_docs, signature_text
from fer_core.scaffold.examples import EXAMPLES
from fer_core.testing import CHECKERS

TESTS = Path(__file__).resolve().parent
REGENERATE = "regenerate it with `python -m fer_core.hookdocs --write`"


def documented_hooks(text: str) -> dict[str, tuple[str, str]]:
    """Hook name -> (signature in its python block, the prose after it) for every '### `name`' section."""
    sections = re.split(r"^### `(\w+)`\s*$", text, flags=re.M)
    found = {}
    for name, body in zip(sections[1::2], sections[2::2]):
        block = re.search(r"```python\n(.*?)\n```\n(.*)", body, flags=re.S)
        found[name] = (block.group(1).strip(), block.group(2)) if block else ("", body)
    return found


def test_the_specs_are_found():
    assert list(hook_specs()) == ["register_encoders", "register_backbones", "register_heads",
                                  "register_losses", "register_augments", "register_detectors"]


def test_hooks_md_is_current():
    assert DOCS_PATH.is_file(), f"{DOCS_PATH} is missing; {REGENERATE}"
    assert DOCS_PATH.read_text() == render_hook_docs(), f"{DOCS_PATH} is stale; {REGENERATE}"


@pytest.mark.parametrize("hook", list(hook_specs()))
def test_hook_is_documented_with_its_signature_and_docstring(hook):
    documented = documented_hooks(DOCS_PATH.read_text())
    assert hook in documented, f"hook {hook} is not documented in {DOCS_PATH}; {REGENERATE}"
    spec = getattr(hookspecs, hook)
    signature, prose = documented[hook]
    assert signature == signature_text(spec), (
        f"{DOCS_PATH} documents {signature!r} but the spec is {signature_text(spec)!r}; {REGENERATE}")
    assert signature == f"def {hook}{inspect.signature(spec)}".replace("'", ""), signature
    assert inspect.cleandoc(spec.__doc__) in prose, f"the docstring of {hook} is not in {DOCS_PATH}; {REGENERATE}"


def test_no_hook_is_documented_that_does_not_exist():
    extra = set(documented_hooks(DOCS_PATH.read_text())) - set(hook_specs())
    assert not extra, f"{DOCS_PATH} documents hooks that fer_core/hookspecs.py no longer has: {sorted(extra)}"


def test_a_changed_signature_is_caught(monkeypatch):
    def register_heads(register: hookspecs.Register, extra: int) -> None:
        """Register heads."""

    monkeypatch.setattr(hookspecs, "register_heads", hookspecs.hookspec(register_heads))
    documented, _ = documented_hooks(DOCS_PATH.read_text())["register_heads"]
    assert documented != signature_text(hookspecs.register_heads)
    assert render_hook_docs() != DOCS_PATH.read_text()


def hooks_implemented_in_tests() -> set[str]:
    """Hooks that some test file (other than this one) implements in a plugin it loads."""
    found = set()
    for path in TESTS.glob("test_*.py"):
        if path.name != Path(__file__).name:
            found |= set(re.findall(r"def (register_\w+)\(register", path.read_text()))
    return found


@pytest.mark.parametrize("hook", list(hook_specs()))
def test_every_hook_has_a_test(hook):
    kind = KIND_OF_HOOK.get(hook)
    assert kind is not None, f"hook {hook} is not called by the plugin host (fer_core.plugins.HOOKS)"
    assert kind in CHECKERS, f"hook {hook} has no conformance check: add fer_core.testing.check_{kind}"
    assert kind in EXAMPLES, f"hook {hook} has no example for `fer plugin new --kind {kind}` (fer_core.scaffold)"
    assert hook in hooks_implemented_in_tests(), (
        f"hook {hook} has no test: no test in tests/ loads a plugin that implements it "
        f"(see test_each_hook_registers_a_conforming_component in tests/test_conformance.py)")
