"""The FastAPI app of ``fer serve``.

    GET  /          the page: drop or pick face images, see the expression and a bar per class, and
                    the point on the valence-arousal circle for models that predict them
    GET  /health    {"status": "ok"}
    GET  /info      classes, recipe name, model format and size, outputs, limits, batching counters
    POST /predict   multipart/form-data, one or more files in field ``image`` (or ``images``)
                    -> [{filename, label, confidence, probabilities: {class: p}}, ...] in upload order;
                    ``valence`` and ``arousal`` (in [-1, 1]) too for models with valence/arousal outputs,
                    and only those for valence/arousal-only models
    POST /faces     the same upload -> [{filename, width, height, faces: [{box, score, landmarks,
                    label, confidence, probabilities[, valence, arousal]}, ...]}, ...]: every face
                    found, aligned and predicted (501 when no face detector is installed)

Bad requests get a 4xx with ``{"detail": "<one line>"}``: 400 empty request, empty file or
malformed body; 413 a file over ``max_bytes`` or too many files; 415 not multipart, or a
file that is not a readable image; 422 a form without an ``image`` field.
"""

from __future__ import annotations

import asyncio
from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import FastAPI, HTTPException, Request
from fastapi.responses import HTMLResponse, JSONResponse
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException as StarletteHTTPException

from fer_core.predictor import Predictor, infer_function, prediction
from fer_core.serve.batching import Batcher
from fer_core.serve.faces import FaceService

PAGE = Path(__file__).parent / "static" / "index.html"
FIELDS = ("image", "images")
MULTIPART_OVERHEAD = 64 * 1024  # headers and boundaries around the files


def one_line(text: object, limit: int = 200) -> str:
    return " ".join(str(text).split())[:limit]


def create_app(predictor: Predictor, max_bytes: int = 10_000_000, max_files: int = 32,
               max_batch: int = 32, max_wait_ms: float = 5.0, faces: FaceService | None = None) -> FastAPI:
    """An app serving ``predictor``; its batcher thread stops when the app shuts down.

    ``faces`` serves ``POST /faces`` (default: ``FaceService(predictor)``, which builds the
    first installed detector on the first request)."""
    batcher = Batcher(infer_function(predictor), max_batch=max_batch, max_wait_ms=max_wait_ms)
    faces = faces or FaceService(predictor)
    limits = {"max_bytes": max_bytes, "max_files": max_files, "max_batch": max_batch, "max_wait_ms": max_wait_ms}

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        yield
        batcher.close()

    app = FastAPI(title=f"fer serve: {predictor.name}", lifespan=lifespan, docs_url=None, redoc_url=None)
    app.state.predictor, app.state.batcher = predictor, batcher

    @app.exception_handler(StarletteHTTPException)
    async def one_line_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return JSONResponse({"detail": one_line(exc.detail)}, status_code=exc.status_code)

    @app.get("/", response_class=HTMLResponse)
    async def page() -> HTMLResponse:
        return HTMLResponse(PAGE.read_text())

    @app.get("/health")
    async def health() -> dict:
        return {"status": "ok"}

    @app.get("/info")
    async def info() -> dict:
        return {**predictor.info(), "limits": limits, "served": batcher.stats(), "faces": faces.info()}

    @app.post("/predict")
    async def predict(request: Request) -> list[dict]:
        uploads = await _uploads(request, max_bytes, max_files)
        images = []
        for upload in uploads:
            data = await _read_limited(upload, max_bytes)
            try:
                images.append(await run_in_threadpool(predictor.decode, data))
            except Exception as exc:
                raise HTTPException(415, f"{_name(upload)}: not a readable image ({type(exc).__name__}); "
                                         f"send PNG, JPEG, WebP, BMP or GIF files") from None
        outputs = await _classify(batcher, images)
        return [{"filename": upload.filename, **prediction(predictor.classes, p)}
                for upload, p in zip(uploads, outputs)]

    @app.post("/faces")
    async def find_faces(request: Request) -> list[dict]:
        uploads = await _uploads(request, max_bytes, max_files)
        results = []
        for upload in uploads:
            data = await _read_limited(upload, max_bytes)
            try:
                image, crops, found = await run_in_threadpool(faces.prepare, data, _name(upload))
            except faces.unavailable as exc:
                raise HTTPException(501, str(exc)) from None
            except faces.bad_image as exc:
                raise HTTPException(415, str(exc)) from None
            outputs = await _classify(batcher, crops)
            results.append({"filename": upload.filename, "width": int(image.shape[1]), "height": int(image.shape[0]),
                            "faces": [{**face.as_dict(), **prediction(predictor.classes, p)}
                                      for face, p in zip(found, outputs)]})
        return results

    return app


async def _classify(batcher: Batcher, inputs: list) -> list:
    """The outputs of each model input (``infer`` rows), through the batcher; a 500 with one line on failure."""
    try:
        return await asyncio.gather(*(asyncio.wrap_future(batcher.submit(x)) for x in inputs))
    except Exception as exc:
        raise HTTPException(500, f"prediction failed: {type(exc).__name__}: {one_line(exc)}") from None


async def _uploads(request: Request, max_bytes: int, max_files: int) -> list[UploadFile]:
    """The files of a /predict request, or the 4xx that says what is wrong with it."""
    length = request.headers.get("content-length")
    if length is not None and length.isdigit() and int(length) > max_bytes * max_files + MULTIPART_OVERHEAD:
        raise HTTPException(413, f"request body of {int(length)} bytes is over the limit "
                                 f"({max_files} files of at most {max_bytes} bytes)")
    content_type = request.headers.get("content-type", "")
    if not content_type.startswith("multipart/form-data"):
        if length in (None, "0") and not await request.body():
            raise HTTPException(400, "empty request: send one or more images as multipart/form-data "
                                     "in field 'image'")
        raise HTTPException(415, f"send images as multipart/form-data in field 'image', "
                                 f"not '{content_type or 'no content type'}'")
    try:
        form = await request.form(max_files=max_files + 1, max_fields=1000)
    except Exception as exc:  # starlette answers parser errors with its own HTTPException(400)
        message = one_line(getattr(exc, "detail", exc))
        if "Too many files" in message:
            raise HTTPException(413, f"more than {max_files} images in one request; send fewer per request") from None
        raise HTTPException(400, f"malformed multipart body ({message})") from None
    values = [value for field in FIELDS for value in form.getlist(field)]
    files = [value for value in values if isinstance(value, UploadFile)]
    if len(files) < len(values):
        raise HTTPException(422, "field 'image' holds text, not a file; upload files, e.g. curl -F image=@face.jpg")
    if not files:
        others = sorted(set(form.keys()))
        if others:
            raise HTTPException(422, f"no field 'image' in the form (got {', '.join(map(repr, others))}); "
                                     f"send files as image=@face.jpg")
        raise HTTPException(400, "empty request: no images; send one or more files in field 'image'")
    if len(files) > max_files:
        raise HTTPException(413, f"more than {max_files} images in one request; send fewer per request")
    return files


async def _read_limited(upload: UploadFile, max_bytes: int) -> bytes:
    data = await upload.read(max_bytes + 1)
    if len(data) > max_bytes:
        raise HTTPException(413, f"{_name(upload)}: over the {max_bytes}-byte limit per image "
                                 f"(fer serve --max-bytes)")
    if not data:
        raise HTTPException(400, f"{_name(upload)}: empty file")
    return data


def _name(upload: UploadFile) -> str:
    return one_line(upload.filename or "upload", 80)
