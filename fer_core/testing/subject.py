"""The component under test (``Subject``) and the small helpers every check uses."""

from __future__ import annotations

import contextlib
import random
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from fer_core.registry import Component, Registry


class ConformanceError(AssertionError):
    """A component breaks the contract of its kind; the message names it and the problem."""


@dataclass
class Report:
    kind: str
    name: str
    plugin: str = ""
    passed: list[str] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)  # check -> why


@dataclass
class Case:
    """One forward call: its arguments, and the mode the core would call it in."""

    label: str
    args: tuple
    train: bool = False
    space: str = "image"


def one_line(exc: BaseException, limit: int = 300) -> str:
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text[:limit]}"


@contextlib.contextmanager
def seeded(seed: int) -> Iterator[None]:
    """Seed torch, random and numpy for the block, and restore their states after it."""
    py_state, np_state = random.getstate(), np.random.get_state()
    with torch.random.fork_rng(devices=list(range(torch.cuda.device_count()))):
        torch.manual_seed(seed)
        random.seed(seed)
        np.random.seed(seed)
        try:
            yield
        finally:
            random.setstate(py_state)
            np.random.set_state(np_state)


def tensors(value: Any) -> list[torch.Tensor]:
    if isinstance(value, torch.Tensor):
        return [value]
    if isinstance(value, (tuple, list)):
        return [t for item in value for t in tensors(item)]
    return []


def same(a: Any, b: Any) -> bool:
    """Outputs equal exactly (tensors compared on the CPU, element by element)."""
    ta, tb = tensors(a), tensors(b)
    return len(ta) == len(tb) and all(
        x.shape == y.shape and x.dtype == y.dtype and torch.equal(x.detach().cpu(), y.detach().cpu())
        for x, y in zip(ta, tb)
    )


def to_device(value: Any, device: torch.device | str) -> Any:
    if isinstance(value, torch.Tensor):
        return value.to(device)
    if isinstance(value, tuple):
        return tuple(to_device(v, device) for v in value)
    return value


@dataclass
class Subject:
    """The component under test: how to build it, and where problems are reported."""

    spec: Any  # a fer_core.testing.kinds.KindSpec
    name: str
    params: dict
    registry: Registry
    plugin: str | None = None
    meta: bool = False
    from_host: bool = False
    component: Component | None = None
    reference: nn.Module | None = None  # the build of seed 0, shared by the read-only checks

    @property
    def kind(self) -> str:
        return self.spec.kind

    @property
    def path(self) -> str:
        """Where a recipe puts this component, for the registry's messages."""
        return f"model.{self.kind}" if self.kind in ("encoder", "backbone", "head") else self.kind

    @property
    def device(self) -> str:
        return "meta" if self.meta else "cpu"

    def fail(self, problem: str) -> None:
        raise ConformanceError(f"{self.kind} '{self.name}': {problem}")

    def build(self, seed: int = 0) -> nn.Module:
        spec = {"name": self.name, **self.params}
        where = torch.device("meta") if self.meta else contextlib.nullcontext()
        try:
            with seeded(seed), where:
                module = self.registry.build(self.kind, spec, self.path, self.spec.context)
        except (ConformanceError, KeyboardInterrupt):
            raise
        except Exception as exc:
            self.fail(f"cannot be built from {self.params or 'its defaults'}: {one_line(exc)}")
        if not isinstance(module, nn.Module):
            self.fail(f"the factory returned {type(module).__name__}, not a torch.nn.Module")
        return module.to("meta") if self.meta else module

    def cases(self, module: nn.Module, device: str | None = None) -> list[Case]:
        cases = self.spec.cases(module)
        device = device or self.device
        return [Case(c.label, to_device(c.args, device), c.train, c.space) for c in cases]

    def forward(self, module: nn.Module, case: Case, seed: int = 0, grad: bool = False) -> Any:
        module.train(case.train)
        try:
            with seeded(seed), (contextlib.nullcontext() if grad else torch.no_grad()):
                return module(*case.args)
        except (ConformanceError, KeyboardInterrupt):
            raise
        except Exception as exc:
            self.fail(f"forward on {case.label} raised {one_line(exc)}")


def check_param_gradients(s: Subject, module: nn.Module) -> None:
    missing = [n for n, p in module.named_parameters() if p.requires_grad and p.grad is None]
    if missing:
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        s.fail(f"parameter {missing[0]} gets no gradient{more}; use it in forward, or set requires_grad=False")
    if not s.meta:
        bad = [n for n, p in module.named_parameters() if p.grad is not None and not torch.isfinite(p.grad).all()]
        if bad:
            s.fail(f"parameter {bad[0]} gets a non-finite gradient")


def weighted_sum(out: torch.Tensor) -> torch.Tensor:
    """A scalar whose gradient reaches every output element (a plain sum can cancel, e.g. after softmax)."""
    g = torch.Generator().manual_seed(0)
    weights = torch.randn(out.shape, generator=g).to(out.device)
    return (out.float() * weights).sum()
