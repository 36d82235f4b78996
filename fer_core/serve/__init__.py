"""``fer serve``: a web page and a JSON API over a trained run or an exported ONNX model.

Import :mod:`fer_core.serve.app` (FastAPI) only when serving; this package itself is cheap.
"""
