"""fer-distill: hook implementations only (importing this must stay cheap: no torch)."""

from fer_core import hookimpl


@hookimpl
def register_losses(register):
    register("distill", "fer_distill.loss:build_distill",
             summary="knowledge distillation from a trained run or .onnx teacher (temperature, alpha)")
