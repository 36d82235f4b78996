"""``train.compile``: the training steps through torch.compile, or in eager mode where it cannot compile."""

from __future__ import annotations

import torch
from rich.console import Console


class CompiledOrEager:
    """A training-step callable: torch.compile's module, falling back to the eager one for good where it fails.

    Compilation happens at the first call of each new input shape; such a call runs with the
    model's buffers and the RNG saved beforehand, so that when compiling fails the same step runs
    eagerly from the same state (an eager run would have taken exactly these steps). An error that
    the eager module raises too is the step's own error and is raised as it is.
    """

    backend = "inductor"

    def __init__(self, net: torch.nn.Module, model: torch.nn.Module, console: Console | None):
        self.eager, self.model, self.console = net, model, console
        self.shapes: set[tuple] = set()
        try:
            self.compiled = torch.compile(net, backend=self.backend)
        except Exception as exc:  # torch.compile itself refuses (e.g. an unsupported Python)
            self.fall_back(exc)

    def __call__(self, inputs: torch.Tensor, *args, **kwargs):
        if self.compiled is None:
            return self.eager(inputs, *args, **kwargs)
        shape = tuple(inputs.shape)
        if shape in self.shapes:
            return self.compiled(inputs, *args, **kwargs)
        buffers = {name: b.detach().clone() for name, b in self.model.named_buffers()}
        rng = torch.get_rng_state(), (torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None)
        try:
            out = self.compiled(inputs, *args, **kwargs)
        except Exception as exc:
            with torch.no_grad():
                for name, value in self.model.named_buffers():
                    value.copy_(buffers[name])
            torch.set_rng_state(rng[0])
            if rng[1] is not None:
                torch.cuda.set_rng_state_all(rng[1])
            out = self.eager(inputs, *args, **kwargs)  # raises the step's own error, if it is one
            self.fall_back(exc)
            return out
        self.shapes.add(shape)
        return out

    def fall_back(self, exc: Exception) -> None:
        self.compiled = None
        cause = exc  # torch wraps the compiler's own error (BackendCompilerFailed, InductorError): name that one
        while getattr(cause, "inner_exception", None) or cause.__cause__:
            cause = getattr(cause, "inner_exception", None) or cause.__cause__
        reason = next((line.strip() for line in str(cause).splitlines() if line.strip()), "")[:200]
        if self.console is not None:
            self.console.print(f"train.compile: torch.compile cannot compile this model here ({type(cause).__name__}"
                               f"{': ' + reason if reason else ''}); training in eager mode", highlight=False,
                               soft_wrap=True)

    def train(self, mode: bool = True):
        self.eager.train(mode)
        return self

    def no_sync(self):
        return self.eager.no_sync()
