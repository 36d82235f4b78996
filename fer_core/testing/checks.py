"""The conformance checks shared by every kind, and the runner that applies them in order.

What differs between kinds (context arguments, inputs, declared attributes, the
shape of the outputs, what must get a gradient) lives in ``fer_core.testing.kinds``.
"""

from __future__ import annotations

import copy
import inspect
import io
import pickle
from collections.abc import Callable, Collection, Mapping
from typing import Any

import torch
import yaml
from torch import nn

from fer_core.errors import FerError
from fer_core.registry import Registry, normal_dist
from fer_core.testing.subject import Case, ConformanceError, Report, Subject, one_line, same, tensors, to_device

CHECK_NAMES = ("registered", "parameters", "builds", "shapes", "devices", "state_dict", "pickle", "gradients",
               "determinism")
VALUE_CHECKS = ("pickle", "determinism")  # need real values: skipped with meta=True


# -- the checks, in order ------------------------------------------------------
def check_registered(s: Subject) -> str | None:
    found = s.registry.find(s.kind, s.name)
    if found is None:
        installed = ", ".join(s.registry.names(s.kind)) or "none"
        s.fail(f"is not registered; installed {s.kind}s: {installed}{_host_failures(s)}")
    s.component = found
    if s.plugin and normal_dist(s.component.plugin) != normal_dist(s.plugin):
        s.fail(f"is registered by {s.component.plugin}, not by {s.plugin}")
    return None


def _host_failures(s: Subject) -> str:
    if not s.from_host:
        return ""
    from fer_core.plugins import get_host

    failed = [f"{p.dist} failed ({p.error})" for p in get_host().failures]
    return f"; {'; '.join(failed)}" if failed else ""


def check_parameters(s: Subject) -> str | None:
    try:
        factory = s.component.load()
    except FerError as exc:
        s.fail(str(exc))
    title = getattr(factory, "__qualname__", repr(factory))
    signature = inspect.signature(factory)
    if any(p.kind is p.VAR_KEYWORD for p in signature.parameters.values()):
        s.fail(f"factory {title} takes **kwargs; name its parameters so that recipes can be checked")
    for pname, parameter in s.component.parameters().items():
        if parameter.annotation is inspect.Parameter.empty:
            s.fail(f"parameter '{pname}' of factory {title} has no type annotation, so recipe values "
                   f"cannot be type-checked")
    try:
        plain = yaml.safe_load(yaml.safe_dump(s.params)) == s.params
    except yaml.YAMLError:
        plain = False
    if not plain:
        s.fail(f"params {s.params!r} are not plain recipe values (numbers, strings, lists, mappings)")
    try:
        s.registry.check_params(s.kind, {"name": s.name, **s.params}, s.path)
    except FerError as exc:
        s.fail(f"rejects params {s.params!r}: {exc}")
    return None


def check_builds(s: Subject) -> str | None:
    module = s.build(seed=0)
    s.spec.declares(s, module)
    check_param_groups(s, module)
    s.reference = module
    return None


def check_param_groups(s: Subject, module: nn.Module) -> None:
    """An optional ``param_groups(lr, weight_decay, layer_decay=None)`` (the contract of ``fer_core.optim``)
    must hold each trainable parameter exactly once, in groups that carry their final ``lr``."""
    own = getattr(module, "param_groups", None)
    if not callable(own):
        return
    names = {id(p): n for n, p in module.named_parameters()}
    seen: set[int] = set()
    groups = own(1e-3, 0.05)
    for i, group in enumerate(groups):
        if not isinstance(group, Mapping) or "params" not in group:
            s.fail(f"param_groups()[{i}] is not a dict with 'params'")
        label = group.get("name", i)
        if "lr" not in group or "lr_scale" in group:
            s.fail(f"param group {label} must carry its final 'lr' and no 'lr_scale' (the contract of fer_core.optim)")
        for param in group["params"]:
            name = names.get(id(param))
            if name is None:
                s.fail(f"param group {label} holds a tensor that is not one of the module's parameters")
            if id(param) in seen:
                s.fail(f"parameter {name} is in two param groups")
            seen.add(id(param))
            if param.ndim <= 1 and group.get("weight_decay", 0.05) > 0:
                s.fail(f"parameter {name} (a norm, bias or scale) gets weight decay in param group {label}; "
                       f"give it weight_decay 0")
    left_out = [n for n, p in module.named_parameters() if p.requires_grad and id(p) not in seen]
    if left_out:
        s.fail(f"trainable parameter {left_out[0]} is in no param group, so it would never train")


def check_shapes(s: Subject) -> str | None:
    for case in s.cases(s.reference):
        s.spec.check_output(s, s.reference, case, s.forward(s.reference, case))
    return None


def stray_tensors(module: nn.Module) -> list[str]:
    """Tensors kept as plain attributes (not parameters or buffers): ``.to(device)`` leaves them behind."""
    found = []
    for prefix, sub in module.named_modules():
        for attr, value in vars(sub).items():
            if attr.startswith("_"):
                continue
            items = value if isinstance(value, (list, tuple)) else [value]
            if any(isinstance(v, torch.Tensor) for v in items):
                found.append(f"{prefix}.{attr}" if prefix else attr)
    return found


def check_devices(s: Subject) -> str | None:
    if s.spec.host_only(s.reference):
        return "sample augments run in DataLoader workers, on the CPU"
    stray = stray_tensors(s.reference)
    if stray:
        s.fail(f"tensor attribute {stray[0]} is not a parameter or buffer, so .to(device) leaves it behind; "
               f"use register_buffer (persistent=False when it is not state)")
    if s.meta:
        return None  # everything already ran on the meta device
    notes = []
    moved = s.build(seed=0).to("meta")
    _check_placed(s, moved, "meta")
    for case in s.cases(moved, "meta"):
        try:
            moved.train(case.train)
            with torch.no_grad():
                out = moved(*case.args)
        except Exception as exc:
            message = one_line(exc)
            if "device" in message:
                s.fail(f"forward on {case.label} after .to('meta') raised {message}; create tensors in "
                       f"forward with device=x.device, or register them as buffers")
            notes.append(f"meta device unsupported ({message[:80]})")
            break
        _check_outputs_on(s, out, "meta", case)
    if torch.cuda.is_available():
        _check_cuda_round_trip(s)
    else:
        notes.append("no CUDA device: checked on CPU and meta")
    return "; ".join(notes) or None


def _check_placed(s: Subject, module: nn.Module, device: str) -> None:
    for name, t in [*module.named_parameters(), *module.named_buffers()]:
        if t.device.type != device:
            s.fail(f"{name} stays on {t.device} after .to('{device}')")


def _check_outputs_on(s: Subject, out: Any, device: str, case: Case) -> None:
    for t in tensors(out):
        if t.device.type != device:
            s.fail(f"returns a tensor on {t.device} for inputs on {device} ({case.label})")


def _check_cuda_round_trip(s: Subject) -> None:
    module = s.build(seed=0)
    cases = s.cases(module, "cpu")
    before = [s.forward(module, c) for c in cases]
    module.to("cuda")
    _check_placed(s, module, "cuda")
    for case in cases:
        case_cuda = Case(case.label, to_device(case.args, "cuda"), case.train, case.space)
        _check_outputs_on(s, s.forward(module, case_cuda), "cuda", case)
    module.to("cpu")
    _check_placed(s, module, "cpu")
    for case, out in zip(cases, before):
        if not same(s.forward(module, case), out):
            s.fail(f"gives different outputs after moving to CUDA and back ({case.label})")


def check_state_dict(s: Subject) -> str | None:
    state = s.reference.state_dict()
    if not s.meta:
        buffer = io.BytesIO()
        torch.save(state, buffer)
        buffer.seek(0)
        try:
            state = torch.load(buffer, weights_only=True)
        except Exception as exc:
            s.fail(f"state_dict holds more than tensors and plain data, so checkpoints would not load with "
                   f"weights_only=True: {one_line(exc)}")
    other = s.build(seed=1)
    try:
        other.load_state_dict(state)
    except Exception as exc:
        s.fail(f"its state_dict does not load back into a fresh build: {one_line(exc)}")
    if s.meta:
        return "keys and shapes only (meta=True)"
    for case in s.cases(s.reference):
        if not same(s.forward(s.reference, case), s.forward(other, case)):
            s.fail(f"a fresh build loaded with its state_dict gives different outputs ({case.label}); a tensor "
                   f"that forward uses is not in the state_dict (make it a parameter or a persistent buffer)")
    return None


def check_pickle(s: Subject) -> str | None:
    if s.kind == "augment":
        try:
            twin = pickle.loads(pickle.dumps(s.reference))
        except Exception as exc:
            where = " for DataLoader workers" if getattr(s.reference, "stage", "") == "sample" else ""
            s.fail(f"cannot be pickled{where}: {one_line(exc)}")
    else:
        try:
            twin = copy.deepcopy(s.reference)
        except Exception as exc:
            s.fail(f"cannot be deep-copied (train.ema copies the model): {one_line(exc)}")
    for case in s.cases(s.reference):
        if not same(s.forward(s.reference, case), s.forward(twin, case)):
            s.fail(f"its {'unpickled' if s.kind == 'augment' else 'deep'} copy gives different outputs ({case.label})")
    return None


def check_gradients(s: Subject) -> str | None:
    return s.spec.gradients(s, s.build(seed=0))


def check_determinism(s: Subject) -> str | None:
    twin = s.build(seed=0)
    mine, theirs = s.reference.state_dict(), twin.state_dict()
    for key, value in mine.items():
        if key not in theirs or not same(value, theirs[key]):
            s.fail(f"two builds under one seed differ in {key}; draw initial values from torch's seeded RNG "
                   f"(not time, os.urandom or an unseeded generator)")
    for case in s.cases(s.reference):
        if not same(s.forward(s.reference, case, seed=5), s.forward(twin, case, seed=5)):
            s.fail(f"two builds under one seed give different outputs ({case.label})")
        if not same(s.forward(s.reference, case, seed=5), s.forward(s.reference, case, seed=5)):
            s.fail(f"gives different outputs for the same input under one seed ({case.label}); draw random "
                   f"numbers from torch's RNG")
    return s.spec.determinism(s, s.reference)


CHECKS: dict[str, Callable[[Subject], str | None]] = {
    "registered": check_registered,
    "parameters": check_parameters,
    "builds": check_builds,
    "shapes": check_shapes,
    "devices": check_devices,
    "state_dict": check_state_dict,
    "pickle": check_pickle,
    "gradients": check_gradients,
    "determinism": check_determinism,
}


def run_checks(spec: Any, name: str, params: Mapping[str, Any] | None, *, plugin: str | None = None,
               registry: Registry | None = None, meta: bool = False, skip: Collection[str] = ()) -> Report:
    """Run every check on component ``name`` of ``spec.kind``; raise ConformanceError at the first problem."""
    unknown = set(skip) - set(CHECK_NAMES[3:])
    if unknown:
        raise ValueError(f"cannot skip {sorted(unknown)}; skippable checks are {', '.join(CHECK_NAMES[3:])}")
    if registry is None:
        from fer_core.plugins import get_registry

        subject = Subject(spec, name, dict(params or {}), get_registry(), plugin, meta, from_host=True)
    else:
        subject = Subject(spec, name, dict(params or {}), registry, plugin, meta)
    report = Report(spec.kind, name)
    for check, run in CHECKS.items():
        if check in skip:
            report.skipped[check] = "skipped by the caller"
            continue
        if meta and check in VALUE_CHECKS:
            report.skipped[check] = "compares values (meta=True)"
            continue
        try:
            note = run(subject)
        except (ConformanceError, KeyboardInterrupt):
            raise
        except Exception as exc:
            subject.fail(f"{check} check raised {one_line(exc)}")
        report.passed.append(check)
        if note:
            report.skipped[f"{check} (part)"] = note
        if check == "registered":
            report.plugin = subject.component.plugin
    return report
