"""What a built component declares, per kind: stated once here, read by the core with :func:`declared`.

A module that a factory returns must carry these attributes (class or instance attributes).
The core never guesses a default: a missing one is a one-line error naming the component,
its plugin distribution and what the attribute means. ``fer_core.testing`` checks the same
attributes in a plugin's own tests, and ``docs/architecture.md`` lists them (a test keeps the
three in step).
"""

from __future__ import annotations

from typing import Any

from fer_core.errors import PluginError

# kind -> {attribute: meaning}
ATTRIBUTES: dict[str, dict[str, str]] = {
    "encoder": {
        "input_size": "the pixels it works at (int)",
        "latent_shape": "(T, D) of its tokens, or None when it passes images through",
        "trainable": "whether it can be trained with the classifier (bool)",
        "cacheable": "whether its eval-mode output is deterministic, so it may be cached as latent shards (bool)",
    },
    "backbone": {
        "input_kind": "'image' or 'latent': what it reads",
        "num_features": "the width F of its features [B, F] (int)",
    },
    "head": {"num_classes": "the number C of outputs (int)"},
    "loss": {},
    "augment": {
        "stage": "'sample' (one image) or 'batch' (inputs, targets)",
        "spaces": "a tuple of 'image' and/or 'latent': the inputs it works on",
    },
    "detector": {},  # an object with detect(image) -> list[Face] (fer_core.faces.face), not a module
}

# Optional attributes: absent means the default their meaning states (False for flags).
OPTIONAL_ATTRIBUTES: dict[str, dict[str, str]] = {
    "head": {"outputs": "a dict of named output slices in order, e.g. {'logits': C, 'va': 2} "
                        "(fer_core.outputs); absent: {'logits': num_classes}"},
    "loss": {"target": "'va': scores valence/arousal [B, 2] against targets [B, 2] (affect tasks); "
                       "absent: logits against class targets",
             "wants_batch": "called in training as loss(logits, targets, inputs=..., keys=...): the backbone's "
                            "inputs after the batch augments and the batch's sample keys (distillation)"},
    "augment": {"deterministic": "a sample augment that always gives the same output for the same image "
                                 "(resize), so a teacher's logits may be cached per sample"},
}

# Optional methods a component may offer; the core calls them when present.
OPTIONAL_METHODS: dict[str, tuple[str, ...]] = {
    "encoder": ("param_groups",),
    "backbone": ("param_groups",),
    "head": ("param_groups",),
}


def declared(module: Any, kind: str, attribute: str, where: str, name: str, plugin: str) -> Any:
    """``module.<attribute>``, or a one-line PluginError naming the component and its plugin."""
    if attribute not in ATTRIBUTES[kind]:
        raise KeyError(f"{attribute!r} is not a declared attribute of kind {kind!r}")
    try:
        return getattr(module, attribute)
    except AttributeError:
        raise PluginError(f"{where} '{name}' (plugin {plugin}) does not declare {attribute}: "
                          f"{ATTRIBUTES[kind][attribute]}; every {kind} must (see docs/architecture.md)") from None
