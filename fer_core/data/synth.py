"""Procedurally drawn, labelled synthetic faces for the seven basic expressions.

The built-in data set: every demo and test runs on it, with nothing to download.
Each face is drawn with PIL at three times the requested size and box-filtered
down; a 48x48 face takes about a millisecond on one core, and no torch is needed.

The expressions follow the Facial Action Coding System's prototypes (Ekman &
Friesen, 1978) in cartoon form:

    anger      lowered brows slanting inwards, frown lines, narrowed eyes, tight flat mouth
    disgust    wrinkled nose, squinting eyes, raised upper lip showing teeth, lopsided mouth
    fear       raised brows pulled together, wide eyes, open mouth stretched sideways
    happiness  upturned smile, raised cheeks, squinted eyes
    neutral    relaxed face
    sadness    inner brow ends raised, drooping lids, downturned mouth
    surprise   high arched brows, forehead lines, wide eyes, round open mouth

Everything else varies per sample: who the face is (shape, skin tone, hair,
eyes, lips), how strongly the expression shows, head pose (yaw, pitch, roll),
scale and position, background, lighting gradient, noise, colour versus grey,
and an occluding bar or blob. Randomness comes from a ``numpy.random.Generator``;
:func:`synthesize` derives one per sample from ``(seed, index)``, so any sample
can be rendered on its own and does not depend on how many were asked for.

Each face also reports the attributes it was drawn with (:data:`META` describes them):
its skin tone band (light, medium, dark: thirds of the skin palette), age band (adult, or
older: greyed hair, nasolabial folds and lines under the eyes), pose (frontal when the yaw is
within 11 degrees, else turned; and the yaw, pitch and roll in degrees) and occlusion (none,
bar, blob). ``skin_shares`` draws the skin tone bands with other shares than the default
(equal) ones, so that a set can under-represent one of them on purpose. The age band and
the skin tone band come from a generator spawned from the sample's, so the rest of a face
is the same whatever they are. What shows the expression (creases, lids, nose lines, lips,
brows) is drawn a fixed number of grey levels darker than the skin, not a fraction of its
colour, so it is about as visible on dark skin as on light skin (as far as the darkest
skin, about 55 grey levels, leaves room; see benchmarks/fairness_synth.py for the measured gap).

Each face also has a valence and an arousal in [-1, 1] that follow from what it shows: the
point of its expression on Russell's circumplex of affect (Russell, "A circumplex model of
affect", 1980: valence from unpleasant to pleasant, arousal from calm to excited; the points
are set by hand from where that model puts the emotion words, not measured from any data set),
times the drawn intensity (0.8 to 1.2 of the prototype, which shows in the image), plus
Gaussian noise with standard deviation ``VA_NOISE`` = 0.05 on each, clipped to [-1, 1]
(:data:`AFFECT`, :func:`sample_affect`)::

    expression   valence  arousal
    anger         -0.55     0.60
    disgust       -0.65     0.35
    fear          -0.45     0.70
    happiness      0.75     0.35
    neutral        0.00     0.00
    sadness       -0.65    -0.35
    surprise       0.25     0.75

The noise comes from a second generator spawned from the sample's, so the image is the same
as without it.

Face coordinates: the origin sits between the eyes and nose, one unit is the
half-width of the face, x grows to the face's left (image right) and y downwards.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from dataclasses import dataclass
from typing import Any, Iterator

import numpy as np
from PIL import Image, ImageDraw

from fer_core.data.meta import Field

__all__ = ["AFFECT", "EXPRESSIONS", "META", "VA_NOISE", "VERSION", "SynthFace", "draw_face", "draw_synth_face",
           "rare_skin_shares", "render_face", "sample_affect", "synthesize", "synthesize_faces"]

EXPRESSIONS: tuple[str, ...] = ("anger", "disgust", "fear", "happiness", "neutral", "sadness", "surprise")

SUPERSAMPLE = 3  # draw at this many times the output size, then box-filter down
# what a drawn data set holds, recorded in its manifest (``synth.version``): 2 added valence/arousal;
# `fer run` draws a data.synth set of an older version again
VERSION = 2


# --- expression parameters ---------------------------------------------------------------


@dataclass(frozen=True)
class Expression:
    """Shape of the movable parts of a face, in face units (negative y is up)."""

    brow_raise: float = 0.0  # both brows lifted (+) or lowered (-)
    brow_inner: float = 0.0  # inner ends lifted (+, sadness/fear) or pulled down (-, anger)
    brow_arch: float = 0.04  # bow of the brow
    brow_squeeze: float = 0.0  # inner ends pulled towards the midline
    eye_open: float = 1.0  # lid opening relative to relaxed
    eye_squint: float = 0.0  # lower lid pushed up by the cheeks (0..1)
    gaze_down: float = 0.0  # eyes and upper lids lowered (0..1)
    mouth_width: float = 0.36  # half-width of the mouth
    mouth_curve: float = 0.0  # corners up (+, smile) or down (-)
    mouth_open: float = 0.0  # separation of the lips
    mouth_round: float = 0.0  # 0: lens-shaped opening, 1: round "O"
    lip_press: float = 0.0  # lips pressed thin (0..1)
    lip_raise: float = 0.0  # upper lip lifted (snarl)
    mouth_skew: float = 0.0  # one corner raised, the side chosen per sample
    teeth: float = 0.0  # how much of the opening shows teeth (0..1)
    nose_wrinkle: float = 0.0  # lines across the nose bridge (0..1)
    frown_lines: float = 0.0  # vertical lines between the brows (0..1)
    forehead_lines: float = 0.0  # horizontal lines on the forehead (0..1)
    cheek_raise: float = 0.0  # cheek apples and deep smile folds (0..1)


def _values(expression: Expression) -> np.ndarray:
    return np.array(dataclasses.astuple(expression))


NEUTRAL = Expression()

PROTOTYPES: dict[str, Expression] = {
    "anger": Expression(brow_raise=-0.08, brow_inner=-0.11, brow_arch=0.0, brow_squeeze=0.06, eye_open=0.7,
                        eye_squint=0.2, mouth_width=0.28, mouth_curve=-0.03, lip_press=1.0, frown_lines=1.0),
    "disgust": Expression(brow_raise=-0.05, brow_inner=-0.05, brow_squeeze=0.03, eye_open=0.65,
                          eye_squint=0.6, mouth_width=0.31, mouth_curve=-0.05, mouth_open=0.02,
                          lip_raise=0.08, mouth_skew=0.08, teeth=1.0, nose_wrinkle=1.0, cheek_raise=0.4),
    "fear": Expression(brow_raise=0.09, brow_inner=0.08, brow_arch=0.0, brow_squeeze=0.05, eye_open=1.55,
                       mouth_width=0.43, mouth_curve=-0.05, mouth_open=0.09, teeth=0.5, forehead_lines=0.6,
                       frown_lines=0.3),
    "happiness": Expression(brow_raise=0.02, eye_open=0.8, eye_squint=0.9, mouth_width=0.44, mouth_curve=0.15,
                            mouth_open=0.09, teeth=1.0, cheek_raise=1.0),
    "neutral": NEUTRAL,
    "sadness": Expression(brow_inner=0.11, brow_arch=0.0, brow_squeeze=0.02, eye_open=0.8, gaze_down=0.8,
                          mouth_width=0.30, mouth_curve=-0.11, frown_lines=0.2),
    "surprise": Expression(brow_raise=0.16, brow_arch=0.1, eye_open=1.65, mouth_width=0.19, mouth_open=0.3,
                           mouth_round=1.0, forehead_lines=1.0),
}

# per-sample spread of each parameter (standard deviation, same units)
JITTER = Expression(brow_raise=0.025, brow_inner=0.02, brow_arch=0.015, brow_squeeze=0.015, eye_open=0.12,
                    eye_squint=0.1, gaze_down=0.15, mouth_width=0.03, mouth_curve=0.025, mouth_open=0.02,
                    mouth_round=0.1, lip_press=0.15, lip_raise=0.015, mouth_skew=0.02, teeth=0.2,
                    nose_wrinkle=0.15, frown_lines=0.15, forehead_lines=0.15, cheek_raise=0.15)

# the range every parameter is clipped to after jitter
_LOWER = Expression(brow_raise=-0.2, brow_inner=-0.2, brow_arch=-0.05, brow_squeeze=-0.05, eye_open=0.35,
                    eye_squint=0.0, gaze_down=0.0, mouth_width=0.12, mouth_curve=-0.2, mouth_open=0.0,
                    mouth_round=0.0, lip_press=0.0, lip_raise=0.0, mouth_skew=-0.15, teeth=0.0,
                    nose_wrinkle=0.0, frown_lines=0.0, forehead_lines=0.0, cheek_raise=0.0)
_UPPER = Expression(brow_raise=0.25, brow_inner=0.2, brow_arch=0.2, brow_squeeze=0.1, eye_open=2.0,
                    eye_squint=1.0, gaze_down=1.0, mouth_width=0.55, mouth_curve=0.25, mouth_open=0.45,
                    mouth_round=1.0, lip_press=1.0, lip_raise=0.15, mouth_skew=0.15, teeth=1.0,
                    nose_wrinkle=1.0, frown_lines=1.0, forehead_lines=1.0, cheek_raise=1.0)


_NEUTRAL_VALUES, _JITTER_VALUES = _values(NEUTRAL), _values(JITTER)
_PROTOTYPE_VALUES = {name: _values(expression) for name, expression in PROTOTYPES.items()}
_LOWER_VALUES, _UPPER_VALUES = _values(_LOWER), _values(_UPPER)


def sample_expression(name: str, rng: np.random.Generator) -> tuple[Expression, float]:
    """The prototype of ``name`` at a random intensity (0.8 to 1.2), every parameter jittered; and that intensity."""
    intensity = rng.uniform(0.8, 1.2)
    values = _NEUTRAL_VALUES + intensity * (_PROTOTYPE_VALUES[name] - _NEUTRAL_VALUES)
    values += _JITTER_VALUES * rng.standard_normal(values.shape)
    return Expression(*np.clip(values, _LOWER_VALUES, _UPPER_VALUES).tolist()), float(intensity)


# --- valence and arousal: where each expression sits on Russell's circumplex ----------------

# (valence, arousal) of each prototype at intensity 1; see the module docstring
AFFECT: dict[str, tuple[float, float]] = {
    "anger": (-0.55, 0.60),
    "disgust": (-0.65, 0.35),
    "fear": (-0.45, 0.70),
    "happiness": (0.75, 0.35),
    "neutral": (0.0, 0.0),
    "sadness": (-0.65, -0.35),
    "surprise": (0.25, 0.75),
}
VA_NOISE = 0.05  # standard deviation of the Gaussian noise added to each of valence and arousal


def sample_affect(name: str, intensity: float, rng: np.random.Generator) -> tuple[float, float]:
    """(valence, arousal) of ``name`` shown at ``intensity``: its AFFECT point times the intensity,
    plus Gaussian noise (``VA_NOISE``), clipped to [-1, 1] and rounded to 4 decimals."""
    point = intensity * np.array(AFFECT[name]) + VA_NOISE * rng.standard_normal(2)
    valence, arousal = np.round(np.clip(point, -1.0, 1.0), 4).tolist()
    return valence, arousal


# --- identity: what does not change with the expression -----------------------------------

Colour = tuple[float, float, float]  # RGB, 0..255, as sampled
RGB = tuple[int, int, int]  # as drawn

_SKIN_TONES = np.array([(255, 224, 196), (241, 194, 160), (224, 172, 130), (198, 134, 96),
                        (160, 102, 68), (118, 74, 48), (82, 52, 36)], dtype=np.float64)
_HAIR_COLOURS = np.array([(20, 16, 14), (58, 38, 26), (102, 70, 42), (170, 130, 80),
                          (222, 194, 130), (140, 60, 30), (170, 170, 170)], dtype=np.float64)
_IRIS_COLOURS = np.array([(60, 40, 25), (95, 65, 35), (70, 110, 150), (80, 110, 70), (30, 25, 20)],
                         dtype=np.float64)


# the shape of a face: uniform ranges, face units
_SHAPE_RANGES: dict[str, tuple[float, float]] = {
    "face_height": (1.2, 1.42),  # half-height of the face over its half-width
    "eye_x": (0.36, 0.44),
    "eye_y": (-0.2, -0.1),
    "eye_width": (0.17, 0.22),  # half-width of an eye
    "eye_height": (0.075, 0.1),  # relaxed upper-lid height
    "brow_gap": (0.2, 0.26),  # brow height above the eye
    "brow_thickness": (0.05, 0.09),
    "nose_y": (0.22, 0.32),
    "nose_width": (0.12, 0.18),
    "mouth_y": (0.58, 0.7),
    "lip_thickness": (0.045, 0.075),
    "hairline": (-0.95, -0.7),
}
_SHAPE_LOW, _SHAPE_HIGH = np.array(list(_SHAPE_RANGES.values())).T


@dataclass(frozen=True)
class Identity:
    """The person: face shape and feature placement (see ``_SHAPE_RANGES``), colours, hair style."""

    face_height: float
    eye_x: float
    eye_y: float
    eye_width: float
    eye_height: float
    brow_gap: float
    brow_thickness: float
    nose_y: float
    nose_width: float
    mouth_y: float
    lip_thickness: float
    hairline: float
    skin: Colour
    hair: Colour
    iris: Colour
    lips: Colour
    hair_style: int  # 0 short crop, 1 side part, 2 fringe, 3 long
    skin_tone: str = "medium"  # SKIN_TONES band of ``skin`` before its per-channel jitter
    age_band: str = "adult"  # "older": greyed hair, folds and under-eye lines


def _palette_colour(palette: np.ndarray, position: float) -> np.ndarray:
    """The colour at ``position`` in [0, len - 1]: between two neighbouring palette colours."""
    lo = int(position)
    return palette[lo] + (position - lo) * (palette[min(lo + 1, len(palette) - 1)] - palette[lo])


def _pick_colour(palette: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A random point between two neighbouring palette colours."""
    return _palette_colour(palette, rng.uniform(0, len(palette) - 1))


SKIN_TONES = ("light", "medium", "dark")  # thirds of the skin palette, light to dark
AGE_BANDS = ("adult", "older")
OLDER_SHARE = 0.2
_GREY_HAIR = np.array((205.0, 205.0, 200.0))
_BAND_WIDTH = (len(_SKIN_TONES) - 1) / len(SKIN_TONES)  # palette positions per skin tone band


def rare_skin_shares(rare: str | None = None, share: float = 0.05) -> tuple[float, ...] | None:
    """Shares of the skin tone bands with ``rare`` drawn at ``share`` and the others equally; None: all equal."""
    if rare is None:
        return None
    if rare not in SKIN_TONES:
        raise ValueError(f"unknown skin tone {rare!r}; choose one of {', '.join(SKIN_TONES)}")
    if not 0 <= share <= 1:
        raise ValueError(f"the share of a skin tone is a fraction in [0, 1], got {share}")
    others = (1 - share) / (len(SKIN_TONES) - 1)
    return tuple(share if tone == rare else others for tone in SKIN_TONES)


def sample_identity(rng: np.random.Generator, traits: np.random.Generator | None = None,
                    skin_shares: tuple[float, ...] | None = None) -> Identity:
    """A person; ``traits`` draws the age band (all adults without it) and, with ``skin_shares``, the skin tone band."""
    shape = dict(zip(_SHAPE_RANGES, rng.uniform(_SHAPE_LOW, _SHAPE_HIGH).tolist()))
    older = traits is not None and traits.random() < OLDER_SHARE
    position = rng.uniform(0, len(_SKIN_TONES) - 1)
    if skin_shares is not None and traits is not None:  # the same draw, moved into the chosen band
        band = int(traits.choice(len(SKIN_TONES), p=skin_shares))
        position = (band + position / (len(_SKIN_TONES) - 1)) * _BAND_WIDTH
    skin = np.clip(_palette_colour(_SKIN_TONES, position) * rng.uniform(0.9, 1.05, 3), 0, 255)
    hair = _pick_colour(_HAIR_COLOURS, rng)
    if older:
        hair = hair + 0.75 * (_GREY_HAIR - hair)
    return Identity(
        **shape,
        skin=tuple(skin.tolist()),
        hair=tuple(hair.tolist()),
        iris=tuple(_pick_colour(_IRIS_COLOURS, rng).tolist()),
        lips=tuple(_at_luma(skin * (0.82, 0.55, 0.55) + (30, 0, 5), _luma(skin) - LIP_CONTRAST).tolist()),
        hair_style=int(rng.integers(0, 4)),
        skin_tone=SKIN_TONES[min(int(position / _BAND_WIDTH), len(SKIN_TONES) - 1)],
        age_band=AGE_BANDS[int(older)],
    )


# --- pose: face coordinates -> pixels ------------------------------------------------------


class Pose:
    """Turns face coordinates into canvas pixels; the head is treated as an ellipsoid."""

    depth = 0.8  # how far the face bulges towards the camera

    def __init__(self, yaw: float, pitch: float, roll: float, scale: float, centre: tuple[float, float],
                 face_height: float):
        self.scale, self.face_height = scale, face_height
        self.angles = (yaw, pitch, roll)  # radians
        self.centre = np.array(centre)
        self.turn = np.array([math.cos(yaw), math.cos(pitch)])  # in-plane shrink of x and y
        self.lean = np.array([math.sin(yaw), -0.7 * math.sin(pitch)])  # shift per unit of depth
        c, s = math.cos(roll), math.sin(roll)
        self.rotation = scale * np.array([[c, s], [-s, c]])  # row vectors times this matrix

    def project(self, points: np.ndarray, z: np.ndarray) -> np.ndarray:
        """Pixel positions [N,2] of face points [N,2] at depths z [N]; NaN depth: on the face surface."""
        x, y = points[:, 0], points[:, 1] / self.face_height
        surface = self.depth * np.sqrt(np.maximum(1 - x * x - y * y, 0))
        z = np.where(np.isnan(z), surface, z)
        return (points * self.turn + z[:, None] * self.lean) @ self.rotation + self.centre


def sample_pose(rng: np.random.Generator, canvas: int, face_height: float) -> Pose:
    scale = canvas * rng.uniform(0.3, 0.39)
    shift = canvas * rng.uniform(-0.07, 0.07, 2)
    return Pose(
        yaw=math.radians(rng.uniform(-22, 22)),
        pitch=math.radians(rng.uniform(-15, 15)),
        roll=math.radians(rng.normal(0, 10)),
        scale=scale,
        centre=(canvas / 2 + shift[0], canvas / 2 + shift[1] - 0.15 * scale),
        face_height=face_height,
    )


# --- geometry and colour helpers -----------------------------------------------------------

SILHOUETTE = 0.0  # depth of the head's outline: turns with the head but does not bulge


def _rgb(colour: Colour) -> RGB:
    return tuple(int(min(255.0, max(0.0, v))) for v in colour)


def _shade(colour: Colour, factor: float) -> RGB:
    return _rgb([v * factor for v in colour])


# Expression lines, shadows, lips and brows are drawn a fixed number of grey levels darker than
# the skin rather than a fraction of it, so they show as clearly on dark skin as on light skin
# (as far as the darkest skin, about 55 grey levels, leaves room for).
_LUMA = np.array((0.299, 0.587, 0.114))  # Rec. 601 luminance weights
INK_REFERENCE = 180.0  # grey levels: a darkening factor f takes away (1 - f) * this much luminance
LIP_CONTRAST = 40.0  # grey levels the lips sit below the skin
BROW_CONTRAST = 60.0  # grey levels the brows sit below the skin


def _luma(colour: Colour) -> float:
    return float(np.asarray(colour) @ _LUMA)


def _at_luma(colour: Colour, luma: float) -> np.ndarray:
    """``colour``'s hue at luminance ``luma`` (at least 0)."""
    return np.asarray(colour) * max(luma, 0.0) / max(_luma(colour), 1e-6)


def _ink(colour: Colour, factor: float) -> RGB:
    """``colour`` darkened by (1 - ``factor``) * INK_REFERENCE grey levels, whatever its own luminance."""
    return _rgb(_at_luma(colour, _luma(colour) - (1 - factor) * INK_REFERENCE).tolist())


def _readonly(array: np.ndarray) -> np.ndarray:
    array.flags.writeable = False
    return array


@functools.lru_cache(maxsize=None)
def _unit_circle(n: int) -> np.ndarray:
    t = np.linspace(0, 2 * np.pi, n, endpoint=False)
    return _readonly(np.stack([np.cos(t), np.sin(t)], axis=1))


@functools.lru_cache(maxsize=None)
def _span(n: int) -> np.ndarray:
    """n points from -1 to 1: the parameter along an eye or a mouth."""
    return _readonly(np.linspace(-1, 1, n))


@functools.lru_cache(maxsize=None)
def _ramp(n: int) -> tuple[np.ndarray, np.ndarray]:
    """Straight-line weights [1-t, t] for t in [0, 1], and the bow profile 4t(1-t)."""
    t = np.linspace(0, 1, n)
    return _readonly(np.stack([1 - t, t], axis=1)), _readonly(4 * t * (1 - t))


def _ellipse(cx: float, cy: float, rx: float, ry: float, n: int = 28) -> np.ndarray:
    return _unit_circle(n) * (rx, ry) + (cx, cy)


def _arc(cx: float, cy: float, rx: float, ry: float, start: float, stop: float, n: int) -> np.ndarray:
    t = np.linspace(start, stop, n)
    return np.stack([cx + rx * np.cos(t), cy + ry * np.sin(t)], axis=1)


def _curve(x0: float, y0: float, x1: float, y1: float, bow: float, n: int = 9) -> np.ndarray:
    """Points from (x0, y0) to (x1, y1), bowed upwards by ``bow`` in the middle."""
    weights, profile = _ramp(n)
    points = weights @ np.array([[x0, y0], [x1, y1]])
    points[:, 1] -= bow * profile
    return points


def _band(x: np.ndarray, top: np.ndarray, bottom: np.ndarray) -> np.ndarray:
    """Outline of the region between two curves over the same x."""
    return np.stack([np.concatenate([x, x[::-1]]), np.concatenate([top, bottom[::-1]])], axis=1)


def _tapered(centre_line: np.ndarray, thickness: np.ndarray) -> np.ndarray:
    """Outline of a stroke of varying thickness along a centre line."""
    tangent = np.gradient(centre_line, axis=0)
    normal = tangent[:, ::-1] * (-1, 1) / (np.hypot(tangent[:, 0], tangent[:, 1])[:, None] + 1e-9)
    offset = normal * (thickness[:, None] / 2)
    return np.concatenate([centre_line + offset, (centre_line - offset)[::-1]])


class Sketch:
    """Shapes in face coordinates, in drawing order; projected in one go, then drawn with PIL."""

    def __init__(self) -> None:
        self.points: list[np.ndarray] = []
        self.shapes: list[tuple[int, RGB, float]] = []  # (number of points, colour, line width; 0: filled)
        self.depths: list[float] = []  # one per shape; NaN: on the face surface
        self.depth_profiles: dict[int, np.ndarray] = {}  # shape index -> depth per point, where it varies

    def fill(self, points: np.ndarray, colour: RGB, z: float | np.ndarray = np.nan) -> None:
        self._add(points, colour, 0.0, z)

    def line(self, points: np.ndarray, colour: RGB, width: float, z: float | np.ndarray = np.nan) -> None:
        self._add(points, colour, width, z)

    def _add(self, points: np.ndarray, colour: RGB, width: float, z: float | np.ndarray) -> None:
        if isinstance(z, np.ndarray):
            self.depth_profiles[len(self.shapes)] = z
            z = np.nan
        self.points.append(points)
        self.shapes.append((len(points), colour, width))
        self.depths.append(z)

    def render(self, draw: ImageDraw.ImageDraw, pose: Pose) -> None:
        counts = [count for count, _, _ in self.shapes]
        z = np.repeat(self.depths, counts)
        starts = np.cumsum([0] + counts)
        for index, profile in self.depth_profiles.items():
            z[starts[index] : starts[index + 1]] = profile
        pixels = pose.project(np.concatenate(self.points), z).ravel().tolist()
        for start, (count, colour, width) in zip(starts.tolist(), self.shapes):
            coords = pixels[2 * start : 2 * (start + count)]
            if width:
                draw.line(coords, fill=colour, width=max(1, round(width * pose.scale)))
            else:
                draw.polygon(coords, fill=colour)


# --- the face, part by part ----------------------------------------------------------------


def draw_head(sketch: Sketch, person: Identity) -> None:
    """Long hair behind, neck, ears, the face."""
    h = person.face_height
    if person.hair_style == 3:
        back = np.concatenate([_arc(0, -0.1, 1.22, h + 0.12, np.pi * 0.95, np.pi * 2.05, 24),
                               [[1.25, 1.1], [-1.25, 1.1]]])
        sketch.fill(back, _rgb(person.hair), z=SILHOUETTE)
    neck = np.array([[-0.5, 0.6], [0.5, 0.6], [0.58, h + 0.9], [-0.58, h + 0.9]])
    sketch.fill(neck, _shade(person.skin, 0.85), z=SILHOUETTE)
    for side in (-1, 1):
        sketch.fill(_ellipse(side * 0.98, 0.0, 0.13, 0.24, n=16), _shade(person.skin, 0.93), z=SILHOUETTE)
    sketch.fill(_ellipse(0, 0, 1.0, h, n=48), _rgb(person.skin), z=SILHOUETTE)


def draw_hair(sketch: Sketch, person: Identity, rng: np.random.Generator) -> None:
    """The hair on top of the head, down to a hairline whose shape depends on the style."""
    h, line = person.face_height, person.hairline
    if person.hair_style == 0:  # short crop: a thin cap
        line = min(line - 0.15, -0.95)
    # the crown: the top of a slightly larger head, down to the hairline on both sides
    side_angle = math.asin(max(-1.0, line / (h + 0.08)))
    crown = _arc(0, 0, 1.06, h + 0.08, np.pi - side_angle, 2 * np.pi + side_angle, 32)
    left, right = crown[-1, 0], crown[0, 0]
    if person.hair_style == 2:  # fringe: the hairline dips to the brows, ragged
        x = np.linspace(left, right, 9)
        edge = np.stack([x, line + 0.25 + rng.uniform(-0.06, 0.06, 9) - 0.2 * x**2], axis=1)
    elif person.hair_style == 1:  # side part: the hairline slants
        tilt = rng.choice([-1, 1]) * 0.15
        edge = _curve(left, line + tilt, right, line - tilt, bow=0.12)
    else:
        edge = _curve(left, line, right, line, bow=0.12)
    sketch.fill(np.concatenate([crown, edge]), _rgb(person.hair), z=SILHOUETTE)


def draw_folds(sketch: Sketch, person: Identity, ex: Expression) -> None:
    """Wrinkles and cheek shading, drawn darker the stronger the expression uses them."""
    def crease(points: np.ndarray, strength: float, width: float = 0.022) -> None:
        if strength > 0.2:
            sketch.line(points, _ink(person.skin, 1 - 0.3 * min(strength, 1.0)), width)

    brow_y = person.eye_y - person.brow_gap - ex.brow_raise
    for side in (-1, 1):
        crease(_curve(side * 0.06, brow_y - 0.08, side * 0.08, brow_y + 0.1, bow=0.0, n=4), ex.frown_lines)
        fold_top = (side * (person.nose_width + 0.06), person.nose_y - 0.04)
        corner = (side * (ex.mouth_width + 0.06), person.mouth_y - ex.mouth_curve + 0.04)
        older = person.age_band == "older"
        smile_fold = 0.15 + 0.9 * ex.cheek_raise + 6 * ex.lip_raise + 0.15 * older
        crease(_curve(*fold_top, *corner, bow=-0.02 * side, n=6), smile_fold)
        if older:  # a line under each eye
            eye_x, below = side * person.eye_x, person.eye_y + 0.75 * person.eye_height + 0.05
            crease(_curve(eye_x - 0.7 * person.eye_width, below, eye_x + 0.7 * person.eye_width, below,
                          bow=-0.03, n=5), 0.3, width=0.015)
        if ex.cheek_raise > 0.3:
            cheek = _ellipse(side * (person.eye_x + 0.05), person.nose_y - 0.05, 0.2, 0.12, n=16)
            sketch.fill(cheek, _rgb([v + d for v, d in zip(person.skin, (4, -22, -22))]))  # the same flush on any skin
    for k in range(3):
        y = person.eye_y - 0.04 + 0.055 * k
        crease(_curve(-0.1, y, 0.1, y, bow=0.02, n=5), ex.nose_wrinkle)
    top = max(person.hairline + 0.08, brow_y - 0.5)
    for k in range(3):
        y = top + 0.09 * k
        if y < brow_y - 0.1:
            crease(_curve(-0.45, y, 0.45, y, bow=0.05, n=9), ex.forehead_lines)


def draw_brows(sketch: Sketch, person: Identity, ex: Expression) -> None:
    """Tapered brows, thick at the inner end; height, inner-end lift, arch and squeeze from the expression."""
    colour = _rgb(_at_luma(person.hair, _luma(person.skin) - BROW_CONTRAST).tolist())  # the hair's hue
    base_y = person.eye_y - person.brow_gap - ex.brow_raise
    inner_x = max(0.07, person.eye_x - person.eye_width - 0.02 - ex.brow_squeeze)
    outer_x = person.eye_x + person.eye_width + 0.06
    inner_y = base_y - ex.brow_inner
    outer_y = base_y + 0.02 + 0.3 * max(ex.brow_inner, 0.0)  # the outer end droops as the inner end rises
    thickness = person.brow_thickness * np.linspace(1.2, 0.6, 10)
    for side in (-1, 1):
        centre = _curve(side * inner_x, inner_y, side * outer_x, outer_y, bow=ex.brow_arch, n=10)
        sketch.fill(_tapered(centre, thickness), colour)


def draw_eyes(sketch: Sketch, person: Identity, ex: Expression) -> None:
    """Almond-shaped eyes: lids set by openness, squint and gaze; iris and pupil clipped to the lids."""
    width = person.eye_width
    upper = person.eye_height * ex.eye_open * (1 - 0.35 * ex.gaze_down)
    lower = person.eye_height * (0.75 * min(ex.eye_open, 1.3) - 1.1 * ex.eye_squint)
    lower = max(lower, -0.6 * upper)  # a squint lifts the lower lid into a crescent, never shut

    def lids(cx: float, cy: float, side: int, t: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        shape = (1 - t * t) ** 0.7
        slant = 0.02 * side * t  # outer corners a touch higher
        return cy - upper * shape - slant, cy + lower * shape - slant

    s = _span(15)
    lash, lower_lid, crease = _shade(person.hair, 0.5), _ink(person.skin, 0.7), _ink(person.skin, 0.82)
    for side in (-1, 1):
        cx, cy = side * person.eye_x, person.eye_y
        x = cx + s * width
        top, bottom = lids(cx, cy, side, s)
        sketch.fill(_band(x, top, bottom), (240, 236, 228))
        iris_y = cy + 0.35 * ex.gaze_down * person.eye_height
        for radius, colour in ((0.54 * width, _rgb(person.iris)), (0.24 * width, (10, 8, 8))):
            ring = _ellipse(cx, iris_y, radius, radius, n=20)
            lid_top, lid_bottom = lids(cx, cy, side, np.clip((ring[:, 0] - cx) / width, -1, 1))
            ring[:, 1] = np.clip(ring[:, 1], lid_top, np.maximum(lid_top, lid_bottom))
            sketch.fill(ring, colour)
        sketch.line(np.stack([x, top], axis=1), lash, 0.035)
        sketch.line(np.stack([x, bottom], axis=1), lower_lid, 0.015)
        sketch.line(np.stack([x[2:-2], top[2:-2] - 0.06 - 0.3 * upper], axis=1), crease, 0.012)


def draw_nose(sketch: Sketch, person: Identity, ex: Expression) -> None:
    """Bridge, tip and nostrils; they stand out from the face, so they move more as the head turns."""
    y, w = person.nose_y - 0.03 * ex.nose_wrinkle, person.nose_width * (1 + 0.2 * ex.nose_wrinkle)
    bridge = np.stack([np.full(6, 0.06), np.linspace(-0.05, y - 0.06, 6)], axis=1)
    sketch.line(bridge, _ink(person.skin, 0.85), 0.02, z=np.linspace(0.8, 1.1, 6))
    sketch.line(_curve(-w, y, w, y, bow=-0.06, n=9), _ink(person.skin, 0.72), 0.03, z=1.0)
    for side in (-1, 1):
        sketch.fill(_ellipse(side * w * 0.5, y + 0.005, 0.04, 0.022, n=10), _ink(person.skin, 0.45), z=1.0)


def draw_mouth(sketch: Sketch, person: Identity, ex: Expression, skew_side: int) -> None:
    """Lips around an opening; teeth hang from the upper lip."""
    s = _span(21)
    x = s * ex.mouth_width
    bulge = (1 - s**2) ** (1 - 0.5 * ex.mouth_round)
    # the line where the lips meet, bent by the smile/frown and by a one-sided raise
    middle = person.mouth_y - ex.mouth_curve * s**2 - ex.mouth_skew * np.maximum(skew_side * s, 0) ** 1.5
    snarl = ex.lip_raise * (1 - s**2) ** 0.5 * (1 + 0.8 * skew_side * s)
    upper_inner = middle - 0.35 * ex.mouth_open * bulge - snarl
    lower_inner = middle + 0.65 * ex.mouth_open * bulge
    lip = person.lip_thickness * (1 - 0.75 * ex.lip_press) * (1 - s**2) ** 0.5
    sketch.fill(_band(x, upper_inner - 0.8 * lip - 0.01, lower_inner + 1.1 * lip + 0.01), _rgb(person.lips))
    if (lower_inner - upper_inner).max() > 0.015:
        sketch.fill(_band(x, upper_inner, lower_inner), (34, 8, 12))
        if ex.teeth > 0.15:
            gum = np.minimum(upper_inner + ex.teeth * 0.07 * bulge**0.3, lower_inner)
            inner = slice(2, -2)
            sketch.fill(_band(x[inner], upper_inner[inner], gum[inner]), (236, 232, 218))
    closed = ex.mouth_open < 0.01 and ex.lip_raise < 0.01
    sketch.line(np.stack([x, middle if closed else upper_inner], axis=1), _ink(person.lips, 0.55), 0.02)


# --- the scene -----------------------------------------------------------------------------


def draw_background(rng: np.random.Generator, size: int) -> Image.Image:
    """A two-colour gradient in a random direction, sometimes with a little clutter."""
    a, b = rng.uniform(0, 255, 3), rng.uniform(0, 255, 3)
    angle = rng.uniform(0, 2 * np.pi)
    corners = np.array([[-1, -1], [1, -1], [-1, 1], [1, 1]]) @ (math.cos(angle), math.sin(angle))
    t = (0.5 + 0.35 * corners).reshape(2, 2, 1)
    gradient = Image.fromarray((a + t * (b - a)).astype(np.uint8)).resize((size, size), Image.BILINEAR)
    canvas = size * SUPERSAMPLE
    image = gradient.resize((canvas, canvas), Image.NEAREST)
    draw = ImageDraw.Draw(image)
    for _ in range(int(rng.integers(0, 4))):
        x, y = rng.uniform(0, canvas, 2)
        w, h = rng.uniform(0.1, 0.5, 2) * canvas
        box = [x - w / 2, y - h / 2, x + w / 2, y + h / 2]
        colour = _rgb(rng.uniform(0, 255, 3).tolist())
        (draw.rectangle if rng.random() < 0.5 else draw.ellipse)(box, fill=colour)
    return image


def draw_occluder(draw: ImageDraw.ImageDraw, rng: np.random.Generator, pose: Pose) -> str:
    """A bar (hand, scarf, strap) or a blob somewhere over the face; returns which ("bar", "blob")."""
    colour = _rgb(rng.uniform(0, 255, 3).tolist())
    centre = rng.uniform([-0.8, -0.8], [0.8, 1.1])[None, :]
    cx, cy = pose.project(centre, np.zeros(1))[0]
    if rng.random() < 0.5:
        angle, width = rng.uniform(0, np.pi), rng.uniform(0.2, 0.4) * pose.scale
        dx, dy = 4 * pose.scale * math.cos(angle), 4 * pose.scale * math.sin(angle)
        draw.line([cx - dx, cy - dy, cx + dx, cy + dy], fill=colour, width=int(width))
        return "bar"
    rx, ry = rng.uniform(0.25, 0.45, 2) * pose.scale
    draw.ellipse([cx - rx, cy - ry, cx + rx, cy + ry], fill=colour)
    return "blob"


def finish(image: Image.Image, rng: np.random.Generator, size: int) -> np.ndarray:
    """Downscale, then light, sometimes grey out, and add sensor noise."""
    pixels = np.asarray(image.reduce(SUPERSAMPLE), dtype=np.float32)
    angle, brightness, strength = rng.uniform(0, 2 * np.pi), rng.uniform(0.7, 1.2), rng.uniform(0, 0.35)
    ramp = _span(size).astype(np.float32)
    light = brightness * (1 + strength * np.add.outer(math.sin(angle) * ramp, math.cos(angle) * ramp))
    if rng.random() < 0.2:
        pixels = pixels.mean(axis=2, keepdims=True)
    pixels = pixels * light[..., None] + rng.uniform(0, 10) * rng.standard_normal((size, size, 1), dtype=np.float32)
    face = np.empty((size, size, 3), dtype=np.uint8)
    face[...] = np.clip(pixels, 0, 255)  # grey images broadcast to three channels
    return face


# --- public API ----------------------------------------------------------------------------

FRONTAL_YAW = 11.0  # degrees: a face turned less than this is "frontal"

META: dict[str, Field] = {
    "skin_tone": Field("category", "band of the skin palette the face was drawn from", SKIN_TONES),
    "age_band": Field("category", "adult, or older (greyed hair, nasolabial folds, lines under the eyes)",
                      AGE_BANDS),
    "pose": Field("category", f"frontal (|yaw| <= {FRONTAL_YAW:g} degrees) or turned", ("frontal", "turned")),
    "occlusion": Field("category", "an occluding bar or blob drawn over the face", ("none", "bar", "blob")),
    "yaw": Field("number", "head turn, positive to the face's left", range=(-22.0, 22.0), unit="degrees"),
    "pitch": Field("number", "head tilt up or down", range=(-15.0, 15.0), unit="degrees"),
    "roll": Field("number", "in-plane head rotation", range=(-40.0, 40.0), unit="degrees"),
}


@dataclass(frozen=True)
class SynthFace:
    label: str
    pixels: np.ndarray  # uint8 [size, size, 3]
    attributes: dict[str, Any]  # one value per field of META
    va: tuple[float, float] = (0.0, 0.0)  # (valence, arousal) in [-1, 1], see AFFECT
    intensity: float = 1.0  # how strongly the expression shows (0.8 to 1.2 of its prototype)


def draw_face(expression: str, rng: np.random.Generator, size: int = 48,
              skin_shares: tuple[float, ...] | None = None) -> tuple[np.ndarray, dict[str, Any]]:
    """One face showing ``expression`` (uint8 RGB [size, size, 3]) and the attributes it was drawn with."""
    face = draw_synth_face(expression, rng, size, skin_shares)
    return face.pixels, face.attributes


def draw_synth_face(expression: str, rng: np.random.Generator, size: int = 48,
                    skin_shares: tuple[float, ...] | None = None) -> SynthFace:
    """One face showing ``expression``, with its attributes, intensity and valence/arousal."""
    if expression not in PROTOTYPES:
        raise ValueError(f"unknown expression {expression!r}; expected one of {', '.join(EXPRESSIONS)}")
    canvas = size * SUPERSAMPLE
    # child generators leave rng's stream as it is: the first draws the traits, the second the
    # valence/arousal noise, so the pixels do not depend on either
    traits, affect = rng.spawn(2)
    person = sample_identity(rng, traits, skin_shares)
    ex, intensity = sample_expression(expression, rng)
    pose = sample_pose(rng, canvas, person.face_height)
    skew_side = int(rng.choice([-1, 1]))

    sketch = Sketch()
    draw_head(sketch, person)
    draw_hair(sketch, person, rng)
    draw_folds(sketch, person, ex)
    draw_brows(sketch, person, ex)
    draw_eyes(sketch, person, ex)
    draw_nose(sketch, person, ex)
    draw_mouth(sketch, person, ex, skew_side)

    image = draw_background(rng, size)
    draw = ImageDraw.Draw(image)
    sketch.render(draw, pose)
    occlusion = draw_occluder(draw, rng, pose) if rng.random() < 0.15 else "none"
    yaw, pitch, roll = (round(math.degrees(angle), 1) for angle in pose.angles)
    attributes = {"skin_tone": person.skin_tone, "age_band": person.age_band,
                  "pose": "frontal" if abs(yaw) <= FRONTAL_YAW else "turned", "occlusion": occlusion,
                  "yaw": yaw, "pitch": pitch, "roll": roll}
    pixels = finish(image, rng, size)
    return SynthFace(expression, pixels, attributes, sample_affect(expression, intensity, affect), intensity)


def render_face(expression: str, rng: np.random.Generator, size: int = 48) -> np.ndarray:
    """One face showing ``expression``: uint8 RGB [size, size, 3]."""
    return draw_face(expression, rng, size)[0]


def synthesize_faces(n: int, size: int = 48, seed: int = 0,
                     skin_shares: tuple[float, ...] | None = None) -> Iterator[SynthFace]:
    """``n`` labelled faces with their attributes, classes balanced (sample i shows ``EXPRESSIONS[i % 7]``).

    Sample i is drawn from a generator seeded with ``(seed, i)``, so it is the same
    whatever ``n`` is, and any sample can be rendered on its own.
    """
    for index in range(n):
        name = EXPRESSIONS[index % len(EXPRESSIONS)]
        yield draw_synth_face(name, np.random.default_rng([seed, index]), size, skin_shares)


def synthesize(n: int, size: int = 48, seed: int = 0) -> Iterator[tuple[str, np.ndarray]]:
    """``(label, pixels)`` of :func:`synthesize_faces`."""
    for face in synthesize_faces(n, size, seed):
        yield face.label, face.pixels
