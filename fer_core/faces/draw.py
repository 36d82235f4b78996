"""Drawing faces on a photo: box, five landmarks and "label 0.87" per face, with "V+0.42 A-0.10" (valence,
arousal) for models that predict them (PIL only)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont

COLOURS = [(255, 64, 64), (64, 200, 255), (255, 200, 0), (120, 255, 120), (255, 120, 255), (255, 255, 255)]


def draw_faces(image: np.ndarray, faces: Sequence[dict], ids: Sequence[int] | None = None) -> Image.Image:
    """The RGB ``image`` with each face of ``classify_faces`` (or a track id's colour) drawn on it."""
    canvas = Image.fromarray(image).convert("RGB")
    draw = ImageDraw.Draw(canvas)
    width = max(2, round(max(canvas.size) / 320))
    font = ImageFont.load_default(size=max(12, round(max(canvas.size) / 45)))
    for i, face in enumerate(faces):
        colour = COLOURS[(ids[i] if ids is not None else i) % len(COLOURS)]
        x1, y1, x2, y2 = face["box"]
        draw.rectangle((x1, y1, x2, y2), outline=colour, width=width)
        for x, y in face["landmarks"].values():
            draw.ellipse((x - width, y - width, x + width, y + width), fill=colour)
        text = face_text(face)
        if ids is not None:
            text = f"#{ids[i]} {text}"
        left, top, right, bottom = draw.textbbox((x1, y1), text, font=font)
        lift = bottom - top + 2 * width
        y = y1 - lift if y1 - lift >= 0 else y2
        draw.rectangle((x1, y, x1 + right - left + 2 * width, y + lift), fill=colour)
        draw.text((x1 + width, y + width - (top - y1)), text, fill=(0, 0, 0), font=font)
    return canvas


def face_text(face: dict) -> str:
    """The label of a face: "happiness 0.87", "V+0.42 A-0.10", both, or "face 0.99" before prediction."""
    parts = []
    if "label" in face:
        parts.append(f"{face['label']} {face['confidence']:.2f}")
    if "valence" in face:
        parts.append(f"V{face['valence']:+.2f} A{face['arousal']:+.2f}")
    return " ".join(parts) or f"face {face['score']:.2f}"
