"""``fer data pack --detect``: replace each image by the aligned crop of its main (largest) face."""

from __future__ import annotations

from dataclasses import dataclass

from PIL import Image

from fer_core.data.formats.base import EncodedImage, encode_png
from fer_core.errors import FerError
from fer_core.faces.align import align_face
from fer_core.faces.detect import FaceDetector, read_rgb
from fer_core.faces.face import main_face

NO_FACE = "no_face"


@dataclass
class FaceCropper:
    """Encoded image -> PNG of its main face aligned at ``size`` (or the drop reason ``no_face``)."""

    detector: FaceDetector
    size: int
    margin: float

    def __call__(self, image: EncodedImage) -> EncodedImage | str:
        try:
            pixels = read_rgb(image.data)
        except FerError:
            return "corrupt_image"
        face = main_face(self.detector(pixels))
        if face is None:
            return NO_FACE
        crop = Image.fromarray(align_face(pixels, face.points, self.size, self.margin).crop)
        return encode_png(crop.convert("L") if image.channels == 1 else crop)

    @property
    def record(self) -> dict:
        """What the manifest keeps under ``faces``; ``fer predict`` and ``fer serve`` align the same way."""
        return {"detector": self.detector.name, "size": self.size, "margin": self.margin}
