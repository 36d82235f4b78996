"""What each kind is checked against: its context, inputs, declared attributes, outputs and gradients.

These follow the component contracts of ``fer_core.hookspecs`` and DESIGN.md. Inputs
are tiny and drawn from a fixed generator, so every check is fast and repeatable.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from fer_core.outputs import layout, split
from fer_core.testing.subject import Case, Subject, check_param_gradients, tensors, weighted_sum

SPACES = ("image", "latent")


def _rand(*shape: int, seed: int = 0) -> torch.Tensor:
    return torch.rand(shape, generator=torch.Generator().manual_seed(seed))


def _randn(*shape: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed))


def _known(t: torch.Tensor) -> bool:
    """Values exist (not on the meta device)."""
    return t.device.type != "meta"


def _is_pos_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


def _declared(s: Subject, module: nn.Module, attr: str, what: str) -> Any:
    if not hasattr(module, attr):
        s.fail(f"does not declare {attr} ({what})")
    return getattr(module, attr)


def _check_tensor(s: Subject, out: Any, shape: tuple, what: str, case: Case, dtype: torch.dtype) -> None:
    if not isinstance(out, torch.Tensor):
        s.fail(f"forward returns {type(out).__name__}, expected a tensor {what} ({case.label})")
    if tuple(out.shape) != tuple(shape):
        s.fail(f"output shape {tuple(out.shape)} but expected {tuple(shape)} = {what} ({case.label})")
    _check_values(s, out, case, dtype)


def _check_values(s: Subject, out: torch.Tensor, case: Case, dtype: torch.dtype) -> None:
    if out.dtype != dtype:
        s.fail(f"output dtype {out.dtype} but the inputs are {dtype} ({case.label})")
    if _known(out) and not torch.isfinite(out).all():
        s.fail(f"output has non-finite values ({case.label})")


def _backward_from(s: Subject, module: nn.Module, case: Case) -> Any:
    out = s.forward(module, case, grad=True)
    found = [t for t in tensors(out) if t.is_floating_point() and t.requires_grad]
    if not found:
        s.fail(f"output does not require grad in training mode ({case.label}); is forward under torch.no_grad?")
    sum(weighted_sum(t) for t in found).backward()
    return out


def _trainable(module: nn.Module) -> bool:
    return any(p.requires_grad for p in module.parameters())


class KindSpec:
    kind = ""
    context: dict[str, Any] = {}

    def declares(self, s: Subject, module: nn.Module) -> None:
        """Check the attributes the kind declares."""

    def cases(self, module: nn.Module) -> list[Case]:
        raise NotImplementedError

    def check_output(self, s: Subject, module: nn.Module, case: Case, out: Any) -> None:
        raise NotImplementedError

    def gradients(self, s: Subject, module: nn.Module) -> str | None:
        """Backpropagate through a training-mode forward; every trainable parameter gets a gradient."""
        if not _trainable(module):
            return "no trainable parameters"
        case = self.cases(module)[0]
        case = Case(case.label, tuple(a.to(s.device) for a in case.args), True, case.space)
        _backward_from(s, module, case)
        check_param_gradients(s, module)
        return None

    def determinism(self, s: Subject, module: nn.Module) -> str | None:
        return None

    def host_only(self, module: nn.Module) -> bool:
        return False


@dataclass
class EncoderSpec(KindSpec):
    image_size: int = 32
    in_chans: int = 3
    batch: int = 2
    kind = "encoder"

    @property
    def context(self) -> dict[str, Any]:
        return {"image_size": self.image_size, "in_chans": self.in_chans}

    def declares(self, s, module):
        size = _declared(s, module, "input_size", "the pixels it works at")
        if not _is_pos_int(size):
            s.fail(f"input_size must be a positive int, got {size!r}")
        shape = _declared(s, module, "latent_shape", "(T, D) of its tokens, or None when it passes images through")
        if shape is not None and not (isinstance(shape, (tuple, list)) and len(shape) == 2
                                      and all(_is_pos_int(n) for n in shape)):
            s.fail(f"latent_shape must be (T, D) with positive ints, or None; got {shape!r}")
        for flag in ("trainable", "cacheable"):
            if not isinstance(_declared(s, module, flag, "a bool"), bool):
                s.fail(f"{flag} must be a bool, got {getattr(module, flag)!r}")
        if module.trainable and not _trainable(module):
            s.fail("declares trainable=True but has no parameter that requires grad")

    def cases(self, module):
        sizes = dict.fromkeys((self.image_size, int(module.input_size)))  # the data's size, then its own
        return [Case(f"images [{self.batch}, {self.in_chans}, {n}, {n}]",
                     (_rand(self.batch, self.in_chans, n, n, seed=i),)) for i, n in enumerate(sizes)]

    def check_output(self, s, module, case, out):
        images = case.args[0]
        if module.latent_shape is None:
            if not isinstance(out, torch.Tensor) or out.ndim != 4 or tuple(out.shape[:2]) != tuple(images.shape[:2]):
                got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
                s.fail(f"declares latent_shape None (passes images through) but returns {got} for {case.label}")
            _check_values(s, out, case, images.dtype)
        else:
            shape = (images.shape[0], *module.latent_shape)
            if isinstance(out, torch.Tensor) and out.ndim == 3 and tuple(out.shape) != shape:
                s.fail(f"declares latent_shape {tuple(module.latent_shape)} but returns tokens of shape "
                       f"{tuple(out.shape)} for {case.label}")
            _check_tensor(s, out, shape, "(batch, *latent_shape)", case, images.dtype)

    def gradients(self, s, module):
        if not module.trainable:
            return "declares trainable=False"
        return super().gradients(s, module)

    def determinism(self, s, module):
        if module.cacheable and not s.meta:
            case = self.cases(module)[0]
            module.eval()
            with torch.no_grad():
                if not torch.equal(module(*case.args), module(*case.args)):
                    s.fail("declares cacheable=True but two eval-mode passes over the same images differ")
        return None


@dataclass
class BackboneSpec(KindSpec):
    latent_shape: tuple[int, int] | None = None
    image_size: int = 32
    in_chans: int = 3
    batch: int = 2
    kind = "backbone"

    @property
    def context(self) -> dict[str, Any]:
        latent = tuple(self.latent_shape) if self.latent_shape else None
        return {"latent_shape": latent, "image_size": self.image_size, "in_chans": self.in_chans}

    def declares(self, s, module):
        kind = _declared(s, module, "input_kind", '"image" or "latent"')
        if kind not in SPACES:
            s.fail(f'input_kind must be "image" or "latent", got {kind!r}')
        if kind == "latent" and self.latent_shape is None:
            s.fail("declares input_kind 'latent' but was built without a latent_shape; "
                   "pass latent_shape=(T, D) to check_backbone")
        if kind == "image" and self.latent_shape is not None:
            s.fail("declares input_kind 'image'; call check_backbone without latent_shape")
        features = _declared(s, module, "num_features", "the width of its output")
        if not _is_pos_int(features):
            s.fail(f"num_features must be a positive int, got {features!r}")

    def cases(self, module):
        if module.input_kind == "latent":
            return [Case(f"latents [{self.batch}, {', '.join(map(str, self.latent_shape))}]",
                         (_randn(self.batch, *self.latent_shape),), space="latent")]
        n = self.image_size
        return [Case(f"images [{self.batch}, {self.in_chans}, {n}, {n}]", (_rand(self.batch, self.in_chans, n, n),))]

    def check_output(self, s, module, case, out):
        _check_tensor(s, out, (self.batch, module.num_features), "(batch, num_features)", case, case.args[0].dtype)


@dataclass
class HeadSpec(KindSpec):
    num_features: int = 16
    num_classes: int = 7
    batch: int = 2
    kind = "head"

    @property
    def context(self) -> dict[str, Any]:
        return {"num_features": self.num_features, "num_classes": self.num_classes}

    def declares(self, s, module):
        declared = _declared(s, module, "num_classes", "the number of classes it was built for")
        if declared != self.num_classes:
            s.fail(f"declares num_classes {declared!r} but was built for {self.num_classes} classes")
        outputs = getattr(module, "outputs", None)
        if outputs is not None and not (isinstance(outputs, dict) and outputs and all(
                isinstance(k, str) and isinstance(v, int) and v > 0 for k, v in outputs.items())):
            s.fail(f"declares outputs {outputs!r}; it must be a dict of output names -> positive widths "
                   f"(fer_core.outputs)")

    def cases(self, module):
        return [Case(f"features [{self.batch}, {self.num_features}]", (_randn(self.batch, self.num_features),))]

    def check_output(self, s, module, case, out):
        slices = layout(module)
        if slices == {"logits": self.num_classes}:
            _check_tensor(s, out, (self.batch, self.num_classes), "(batch, num_classes)", case, case.args[0].dtype)
            return
        width = sum(slices.values())
        _check_tensor(s, out, (self.batch, width), f"(batch, {width}) for its outputs {slices}", case,
                      case.args[0].dtype)
        if "va" in slices and _known(out):
            va = split(out, slices)["va"]
            if va.abs().max() > 1 + 1e-4:
                s.fail(f"returns valence/arousal up to {va.abs().max():.3g} for {case.label}; they lie in "
                       f"[-1, 1] (bound them, e.g. with tanh)")


@dataclass
class LossSpec(KindSpec):
    num_classes: int = 7
    class_counts: list[int] | None = None
    batch: int = 4
    kind = "loss"

    @property
    def context(self) -> dict[str, Any]:
        counts = self.class_counts or [10 * (i + 1) for i in range(self.num_classes)]
        return {"num_classes": self.num_classes, "class_counts": list(counts)}

    def cases(self, module):
        b, c = self.batch, self.num_classes
        if getattr(module, "target", None) == "va":
            pred, target = _rand(b, 2).mul(2).sub(1), _rand(b, 2, seed=1).mul(2).sub(1)
            return [Case(f"valence/arousal [{b}, 2] and targets [{b}, 2]", (pred, target), train=True)]
        ids = torch.arange(b) % c
        soft = _rand(b, c, seed=1).softmax(dim=1)
        return [Case(f"logits [{b}, {c}] and class ids [{b}]", (_randn(b, c), ids), train=True),
                Case(f"logits [{b}, {c}] and soft targets [{b}, {c}]", (_randn(b, c), soft), train=True)]

    def check_output(self, s, module, case, out):
        _check_tensor(s, out, (), "a scalar", case, case.args[0].dtype)

    def gradients(self, s, module):
        for case in self.cases(module):
            logits = case.args[0].to(s.device).requires_grad_(True)
            grad_case = Case(case.label, (logits, case.args[1].to(s.device)), True)
            out = s.forward(module, grad_case, grad=True)
            if not isinstance(out, torch.Tensor) or not out.requires_grad:
                s.fail(f"the loss does not depend on its predictions through autograd ({case.label})")
            out.backward()
            if logits.grad is None or (_known(logits.grad) and not torch.isfinite(logits.grad).all()):
                s.fail(f"the predictions get no finite gradient ({case.label})")
        check_param_gradients(s, module)
        return None


@dataclass
class AugmentSpec(KindSpec):
    num_classes: int = 7
    image_size: int = 32
    in_chans: int = 3
    latent_shape: tuple[int, int] = (18, 32)
    batch: int = 4
    kind = "augment"

    @property
    def context(self) -> dict[str, Any]:
        return {"num_classes": self.num_classes}

    def declares(self, s, module):
        stage = _declared(s, module, "stage", '"sample" or "batch"')
        if stage not in ("sample", "batch"):
            s.fail(f'stage must be "sample" or "batch", got {stage!r}')
        spaces = _declared(s, module, "spaces", 'a tuple of "image" and/or "latent"')
        if not isinstance(spaces, (tuple, list)) or not spaces or not set(spaces) <= set(SPACES):
            s.fail(f'spaces must be a non-empty tuple of "image" and/or "latent", got {spaces!r}')
        if stage == "sample" and "image" not in spaces:
            s.fail('sample augments see one image in the data loader; their spaces must include "image"')

    def host_only(self, module):
        return module.stage == "sample"

    def _inputs(self, space: str) -> tuple[str, torch.Tensor]:
        if space == "latent":
            t, d = self.latent_shape
            return f"latents [{self.batch}, {t}, {d}]", _randn(self.batch, t, d)
        n = self.image_size
        return f"images [{self.batch}, {self.in_chans}, {n}, {n}]", _rand(self.batch, self.in_chans, n, n)

    def cases(self, module):
        if module.stage == "sample":
            n = self.image_size
            return [Case(f"an image [{self.in_chans}, {n}, {n}]", (_rand(self.in_chans, n, n),), train=True)]
        cases = []
        ids = torch.arange(self.batch) % self.num_classes
        soft = _rand(self.batch, self.num_classes, seed=1).softmax(dim=1)
        for space in module.spaces:
            label, inputs = self._inputs(space)
            cases.append(Case(f"{label} with class ids", (inputs, ids), True, space))
            cases.append(Case(f"{label} with soft targets", (inputs, soft), True, space))
        return cases

    def check_output(self, s, module, case, out):
        if module.stage == "sample":
            image = case.args[0]
            if not isinstance(out, torch.Tensor) or out.ndim != 3 or out.shape[0] != image.shape[0]:
                got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
                s.fail(f"returns {got} for {case.label}; sample augments return an image [C, H, W] with the same C")
            _check_values(s, out, case, image.dtype)
            if _known(out) and (out.min() < -1e-4 or out.max() > 1 + 1e-4):
                s.fail(f"returns values in [{out.min():.3g}, {out.max():.3g}] for {case.label}; images stay in "
                       f"[0, 1] (clamp them)")
            return
        inputs = case.args[0]
        if not isinstance(out, tuple) or len(out) != 2:
            s.fail(f"returns {type(out).__name__} for {case.label}; batch augments return (inputs, soft targets)")
        mixed, targets = out
        _check_tensor(s, mixed, tuple(inputs.shape), f"the {case.space} batch's shape", case, inputs.dtype)
        shape = (self.batch, self.num_classes)
        if not isinstance(targets, torch.Tensor) or tuple(targets.shape) != shape or not targets.is_floating_point():
            is_tensor = isinstance(targets, torch.Tensor)
            got = f"{tuple(targets.shape)} {targets.dtype}" if is_tensor else type(targets).__name__
            s.fail(f"returns targets {got} for {case.label}; expected soft targets {shape} float")
        if _known(targets):
            sums = targets.float().sum(dim=1)
            if targets.min() < -1e-6 or not torch.allclose(sums, torch.ones_like(sums), atol=1e-3):
                s.fail(f"soft targets must be non-negative and sum to 1 per sample; got sums {sums.tolist()} "
                       f"({case.label})")

    def gradients(self, s, module):
        if module.stage == "sample":
            return "sample augments work on data, outside autograd"
        if "latent" not in module.spaces:
            return "image batches carry no gradient"
        case = next(c for c in self.cases(module) if c.space == "latent")
        latents = case.args[0].to(s.device).requires_grad_(True)
        mixed, _ = s.forward(module, Case(case.label, (latents, case.args[1].to(s.device)), True, "latent"), grad=True)
        if not mixed.requires_grad:
            s.fail(f"cuts the gradient to the latents ({case.label}), so a trainable encoder would not learn")
        weighted_sum(mixed).backward()
        if latents.grad is None:
            s.fail(f"the latents get no gradient ({case.label})")
        check_param_gradients(s, module)
        return None
