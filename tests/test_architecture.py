"""docs/architecture.md names only what exists: its modules and names import, its tables equal the code's,
and fer_core's module-level import graph has no cycles."""

from __future__ import annotations

import ast
import importlib
import re
from pathlib import Path

import pytest

from fer_core import contracts, plugins, registry, runs, task, train

ROOT = Path(__file__).resolve().parent.parent
DOC = (ROOT / "docs" / "architecture.md").read_text()


def section(name: str) -> str:
    match = re.search(rf"<!-- {name}[^>]*-->(.*?)<!-- /{name} -->", DOC, re.S)
    assert match, f"docs/architecture.md has no {name} section"
    return match.group(1)


def rows(name: str) -> list[list[str]]:
    lines = [line for line in section(name).splitlines() if line.startswith("|")][2:]  # after header and rule
    return [[cell.strip() for cell in line.strip("|").split("|")] for line in lines]


def names(cell: str) -> list[str]:
    return re.findall(r"`([^`]+)`", cell)


def resolve(dotted: str):
    parts = dotted.split(".")
    for i in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:i]))
        except ModuleNotFoundError:
            continue
        for attr in parts[i:]:
            obj = getattr(obj, attr)
        return obj
    raise ModuleNotFoundError(dotted)


@pytest.mark.parametrize("dotted", sorted(set(re.findall(r"`(fer_core(?:\.\w+)+)`", DOC))))
def test_every_named_module_and_object_exists(dotted):
    resolve(dotted)


def test_the_kinds_table_is_the_code():
    table = rows("kinds")
    assert table, "no kinds documented"
    for kind, hook, context, attributes in table:
        assert kind in registry.KINDS
        assert names(hook) == [plugins.HOOKS[kind]]
        assert tuple(names(context)) == registry.CONTEXT[kind], kind
        assert tuple(names(attributes)) == tuple(contracts.ATTRIBUTES[kind]), kind


def test_reserved_keys_are_the_registrys():
    assert tuple(names(section("reserved"))) == registry.RESERVED


def test_task_members_and_the_task_table_are_the_code():
    for member_cell, _ in rows("task-methods"):
        for member in names(member_cell):
            if member.startswith("fer_core."):
                continue
            assert hasattr(task.Task, member), member
    documented = {names(name)[0]: resolve(names(cls)[0]) for name, cls in rows("tasks")}
    assert documented == train.TASKS


def test_checkpoint_keys_are_the_code():
    assert tuple(names(section("checkpoint-keys"))) == runs.CHECKPOINT_KEYS
    assert {t.checkpoint_key for t in train.TASKS.values()} - {""} == {"pretrain"}


def fer_core_modules() -> dict[str, Path]:
    out = {}
    for path in (ROOT / "fer_core").rglob("*.py"):
        parts = path.relative_to(ROOT).with_suffix("").parts
        out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return out


def module_level_imports(name: str, path: Path, modules) -> set[str]:
    deps = set()
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1] + [base]).strip(".")
            targets = [base] + [f"{base}.{a.name}" for a in node.names]
        else:
            continue
        deps |= {t for t in targets if t in modules and t != name}
    return deps


def test_fer_core_has_no_import_cycles():
    modules = fer_core_modules()
    graph = {name: module_level_imports(name, path, modules) for name, path in modules.items()}
    state: dict[str, int] = {}

    def visit(name: str, stack: list[str]) -> None:
        state[name] = 1
        for dep in sorted(graph[name]):
            assert state.get(dep) != 1, "import cycle: " + " -> ".join(stack[stack.index(dep):] + [name, dep])
            if dep not in state:
                visit(dep, stack + [name])
        state[name] = 2

    for name in sorted(graph):
        if name not in state:
            visit(name, [])
    assert "fer_core.study" not in graph["fer_core.study_report"]
    for module in ("fer_core.pretrain", "fer_core.inference", "fer_core.classify"):
        assert "fer_core.train" not in graph[module], module
