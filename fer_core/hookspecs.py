"""The six hook specifications of fer-core.

Every hook is called once per plugin, when the plugin host builds its component
registry (on the first command that needs components). Each hook receives a
``register`` callable and returns nothing::

    register(name, target, summary="...", aliases=("other-name",))

* ``name``: the name recipes use (``model.backbone.name: timm``).
* ``target``: a ``"package.module:factory"`` string (preferred: the module is
  imported only when the component is built, so ``fer plugins`` stays instant)
  or the factory callable itself.
* ``summary``: one line shown by ``fer plugins``.
* ``aliases``: further names that resolve to the same component.

The factory is called with the recipe's parameters as keyword arguments, plus
the context arguments of its kind when its signature names them (see
``fer_core.registry.CONTEXT``), and returns a ``torch.nn.Module`` that declares
the attributes of its kind (``fer_core.contracts.ATTRIBUTES``; a missing one is an
error naming the component and its plugin). Encoders, backbones and heads may offer
``param_groups(lr, weight_decay, layer_decay=None) -> list[dict]``, groups with their
final ``lr`` (the contract of ``fer_core.optim``). A detector factory returns a
detector object instead (see ``register_detectors``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Protocol

import pluggy

PROJECT = "fer_core"
hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


class Register(Protocol):
    """The ``register`` callable handed to every hook."""

    def __call__(
        self,
        name: str,
        target: str | Callable[..., Any],
        *,
        summary: str = "",
        aliases: Sequence[str] = (),
    ) -> None: ...


@hookspec
def register_encoders(register: Register) -> None:
    """Register encoders: images [B,3,H,W] in [0,1] -> tokens [B,T,D].

    Called once per plugin when the registry is built. The module a factory
    returns declares ``input_size`` (pixels it wants), ``latent_shape`` ((T, D),
    or None when it passes images through), ``trainable`` and ``cacheable``.
    """


@hookspec
def register_backbones(register: Register) -> None:
    """Register backbones: images or tokens -> features [B,F].

    Called once per plugin when the registry is built. The module declares
    ``input_kind`` ("image" or "latent") and ``num_features``, and may offer
    ``param_groups(lr, weight_decay, layer_decay=None) -> list[dict]`` for
    layer-wise learning rates (``fer_core.optim.timm_param_groups`` builds them).
    """


@hookspec
def register_heads(register: Register) -> None:
    """Register heads: features [B,F] -> logits [B,C].

    Called once per plugin when the registry is built. The module declares
    ``num_classes``.
    """


@hookspec
def register_losses(register: Register) -> None:
    """Register losses: (logits [B,C], targets) -> scalar.

    Called once per plugin when the registry is built. Targets are class ids
    [B] (int64) or soft targets [B,C] (float); factories may accept
    ``class_counts`` to weight classes (``class_weights: auto``), ``classes``
    (the class names) and ``recipe`` (the resolved recipe). A loss module with
    ``wants_batch = True`` is called in training as ``loss(logits, targets,
    inputs=inputs, keys=keys)``: the backbone's inputs after the batch augments
    and the batch's sample keys (list of str); evaluation calls it without them.
    """


@hookspec
def register_augments(register: Register) -> None:
    """Register augments, for one sample or for a whole batch.

    Called once per plugin when the registry is built. The module declares
    ``stage`` ("sample": image tensor [C,H,W] -> same; "batch": (inputs,
    targets) -> (inputs, soft targets [B,C])) and ``spaces`` (a tuple of
    "image" and/or "latent").
    """


@hookspec
def register_detectors(register: Register) -> None:
    """Register face detectors: an RGB image -> the faces in it.

    Called once per plugin when the registry is built. The object a factory
    returns (any class, torch not required) has ``detect(image)``: ``image`` is a
    numpy uint8 array [H, W, 3] in RGB of any size; it returns a list of
    ``fer_core.faces.face.Face``, best score first, each with ``box`` (x1, y1,
    x2, y2), ``score`` in [0, 1] and five ``landmarks`` (x, y): the eye on the
    image's left, the eye on the image's right, the nose tip, the mouth corner on
    the image's left, the one on the image's right; all in image pixels. An image
    without faces gives an empty list. Weights must ship with an installed
    package: a detector never downloads at run time.
    """
