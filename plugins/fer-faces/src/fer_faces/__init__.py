"""fer-faces: hook implementations only (importing this stays cheap: no torch, no OpenCV)."""

from fer_core import hookimpl


@hookimpl
def register_detectors(register):
    register("haar", "fer_faces.haar:HaarDetector",
             summary="OpenCV's bundled Haar face and eye cascades: boxes, eye centres, estimated nose and mouth",
             aliases=("opencv-haar",))
