"""Conformance checks for components, called from a plugin's own tests.

    from fer_core.testing import check_backbone, check_plugin

    def test_plugin_loads_cheaply():
        check_plugin("fer-tiny-cnn")

    def test_tiny_cnn_conforms():
        check_backbone("tiny_cnn", {"widths": [8, 16]}, plugin="fer-tiny-cnn")

Each ``check_<kind>`` looks the component up in the registry of the installed
plugins (or in ``registry=``), builds it from recipe-style parameters with the
context arguments fer-core passes to its kind, and runs these checks on tiny
inputs, in order:

============  ==========================================================================
check         what it verifies
============  ==========================================================================
registered    the name resolves (with ``plugin=``: to that distribution)
parameters    the factory names and annotates its parameters (no ``**kwargs``) and accepts
              ``params``, which are plain recipe values
builds        the factory returns an ``nn.Module`` that declares the attributes of its kind
              (and, if it has ``param_groups``, groups that hold every trainable parameter once)
shapes        outputs have the declared shapes, the inputs' float dtype and finite values
devices       every tensor is a parameter or buffer; it still runs after ``.to("meta")``
              (nothing created on a fixed device); with CUDA, it runs there and back
state_dict    the state dict, saved and read back with ``torch.load(weights_only=True)``,
              loads strictly into a differently seeded build and reproduces the outputs
pickle        augments survive pickling (DataLoader workers); other kinds ``deepcopy`` (EMA)
gradients     every trainable parameter gets a finite gradient (losses: the logits; batch
              augments on latents: the latents, which may come from a trainable encoder)
determinism   two builds under one seed are identical and give identical outputs
============  ==========================================================================

The first problem raises ``ConformanceError``, an ``AssertionError`` whose one-line
message names the component and the problem, e.g. ``backbone 'tiny_cnn': output
shape (2, 10) but expected (2, 12) = (batch, num_features)``. Otherwise ``check_<kind>``
returns a ``Report`` of the checks that ran and those skipped (with the reason).

Options every ``check_<kind>`` takes besides its kind's sizes:

* ``params``: the recipe parameters to build with (keep them small: depth 1, width 32);
* ``plugin="fer-x"``: also require that distribution to be the one registering the name;
* ``registry=``: look the name up in this ``fer_core.registry.Registry`` instead of the
  installed plugins' (a test can ``add`` a ``Component`` with a callable target to it);
* ``skip=("determinism",)``: leave out checks by name (not registered/parameters/builds);
* ``meta=True``: build and run on PyTorch's meta device. Shapes, dtypes, device
  handling, state-dict keys and gradient flow are checked without allocating weights,
  for models too big for a unit test (pSp's 267M parameters); the checks that compare
  values (pickle, determinism) are skipped.

Detectors are not torch modules: ``check_detector`` checks registered, parameters,
builds, sizes (any image size), blank (no face on flat grey), finds_face (Grace Hopper on
matplotlib's sample photo), determinism and input_untouched (``fer_core.testing.detector``).

Without a CUDA device, "moves between devices" is checked through the meta device
(``.to("meta")`` must move every tensor, and forward must then create nothing on the
CPU); with one, the component also runs on CUDA and comes back unchanged.
"""

from fer_core.testing.checks import CHECK_NAMES, run_checks
from fer_core.testing.detector import DETECTOR_CHECKS, run_detector_checks
from fer_core.testing.kinds import AugmentSpec, BackboneSpec, EncoderSpec, HeadSpec, LossSpec
from fer_core.testing.plugin import check_plugin
from fer_core.testing.subject import ConformanceError, Report

__all__ = [
    "CHECK_NAMES",
    "DETECTOR_CHECKS",
    "ConformanceError",
    "Report",
    "check_augment",
    "check_backbone",
    "check_component",
    "check_detector",
    "check_encoder",
    "check_head",
    "check_loss",
    "check_plugin",
]


def check_encoder(name, params=None, *, image_size=32, in_chans=3, batch=2, plugin=None, registry=None,
                  meta=False, skip=()) -> Report:
    """Encoder ``name``: images [batch, in_chans, image_size, image_size] in [0, 1] -> tokens
    [batch, *latent_shape] (or images, when ``latent_shape`` is None), also at its ``input_size``."""
    spec = EncoderSpec(image_size=image_size, in_chans=in_chans, batch=batch)
    return run_checks(spec, name, params, plugin=plugin, registry=registry, meta=meta, skip=skip)


def check_backbone(name, params=None, *, latent_shape=None, image_size=32, in_chans=3, batch=2, plugin=None,
                   registry=None, meta=False, skip=()) -> Report:
    """Backbone ``name``: images [batch, in_chans, image_size, image_size], or latents
    [batch, *latent_shape] for a latent backbone (give ``latent_shape=(T, D)``) -> [batch, num_features]."""
    spec = BackboneSpec(latent_shape=latent_shape, image_size=image_size, in_chans=in_chans, batch=batch)
    return run_checks(spec, name, params, plugin=plugin, registry=registry, meta=meta, skip=skip)


def check_head(name, params=None, *, num_features=16, num_classes=7, batch=2, plugin=None, registry=None,
               meta=False, skip=()) -> Report:
    """Head ``name``: features [batch, num_features] -> logits [batch, num_classes]."""
    spec = HeadSpec(num_features=num_features, num_classes=num_classes, batch=batch)
    return run_checks(spec, name, params, plugin=plugin, registry=registry, meta=meta, skip=skip)


def check_loss(name, params=None, *, num_classes=7, class_counts=None, batch=4, plugin=None, registry=None,
               meta=False, skip=()) -> Report:
    """Loss ``name``: (logits [batch, num_classes], class ids [batch] or soft targets) -> scalar."""
    spec = LossSpec(num_classes=num_classes, class_counts=class_counts, batch=batch)
    return run_checks(spec, name, params, plugin=plugin, registry=registry, meta=meta, skip=skip)


def check_augment(name, params=None, *, num_classes=7, image_size=32, in_chans=3, latent_shape=(18, 32), batch=4,
                  plugin=None, registry=None, meta=False, skip=()) -> Report:
    """Augment ``name``: one image [in_chans, image_size, image_size] (sample stage), or a batch of
    images or latents [batch, *latent_shape] with targets (batch stage, for each declared space)."""
    spec = AugmentSpec(num_classes=num_classes, image_size=image_size, in_chans=in_chans,
                       latent_shape=latent_shape, batch=batch)
    return run_checks(spec, name, params, plugin=plugin, registry=registry, meta=meta, skip=skip)


def check_detector(name, params=None, *, plugin=None, registry=None, skip=()) -> Report:
    """Detector ``name``: uint8 RGB images [H, W, 3] of any size -> a list of ``Face`` (box, score in
    [0, 1], five landmarks). Checked in order: registered, parameters, builds (has ``detect``), sizes
    (noise from 1x1 to 640x480), blank (no face on flat grey), finds_face (Grace Hopper's face and eyes
    on matplotlib's sample photo), determinism, input_untouched (``DETECTOR_CHECKS``)."""
    return run_detector_checks(name, params, plugin=plugin, registry=registry, skip=skip)


CHECKERS = {
    "encoder": check_encoder,
    "backbone": check_backbone,
    "head": check_head,
    "loss": check_loss,
    "augment": check_augment,
    "detector": check_detector,
}


def check_component(kind: str, name: str, params=None, **options) -> Report:
    """``check_<kind>(name, params, **options)`` for a kind given as a string."""
    if kind not in CHECKERS:
        raise ValueError(f"unknown component kind {kind!r}; kinds are {', '.join(CHECKERS)}")
    return CHECKERS[kind](name, params, **options)
