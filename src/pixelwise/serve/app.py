"""The HTTP service: ``POST /predict``, ``GET /model``, ``GET /health`` and the web page at ``/``.

The app depends on the predictor's interface only (``predict(image HWC) -> Prediction`` with a
``mask``, optional ``predict_batch(list)``, ``labels`` a :class:`~pixelwise.data.labels.LabelSet`),
so tests can serve a fake one. Each route is a module-level handler that finds what it needs
in ``request.app.state.service`` (a :class:`Service`); :func:`create_app` only builds that
state and wires the handlers. Every refusal is a 4xx (or 503 when the queue is full) with a
JSON body ``{"error": "..."}``.
"""
from __future__ import annotations

import asyncio
from contextlib import asynccontextmanager
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, Sequence

import anyio
import numpy as np
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException as StarletteHTTPException

from ..errors import PixelwiseError
from ..io.files import encode_mask_png
from ..data.labels import LabelSet, class_pixels
from .batching import InferenceQueue, QueueFull
from .images import ACCEPTED_FORMATS, ImageRejected, decode_image, json_result, legend
from .upload import FILE_FIELD, read_upload

STATIC_DIR = Path(__file__).parent / "static"
# The page loads only its own files; images come back as blob:/data: URLs.
PAGE_CSP = ("default-src 'self'; img-src 'self' blob: data:; style-src 'self'; script-src 'self'; "
            "connect-src 'self'; object-src 'none'; base-uri 'none'; frame-ancestors 'none'")
DECODE_THREADS = 2


def describe_predictor(predictor: Any) -> dict[str, Any]:
    """What ``GET /model`` says about a predictor, read from its attributes where it has them."""
    ckpt = getattr(predictor, "checkpoint", None)
    meta = getattr(predictor, "meta", None)
    meta = meta if isinstance(meta, dict) else {}

    def attr(name: str, default: Any = None) -> Any:
        # The predictor's own attribute, else its checkpoint's, else its metadata dict's.
        for value in (getattr(predictor, name, None), getattr(ckpt, name, None), meta.get(name)):
            if value is not None:
                return value
        return default

    path = attr("path")
    return {
        "name": attr("model_name", type(predictor).__name__),
        "in_channels": attr("in_channels"),
        "backend": attr("backend", "unknown"),
        # Tiling: images larger than tile_size are predicted in overlapping tiles; an image
        # (or tile) smaller than min_input_size pixels a side, the model's own minimum, is
        # mirrored out to it and the result cropped back.
        "tile_size": attr("tile_size"),
        "overlap": attr("overlap"),
        "min_input_size": attr("min_input_size"),
        "checkpoint": Path(path).name if path is not None else None,
        # JSON answers carry the entropy map (uncertainty_png) when the predictor makes it
        "uncertainty": bool(getattr(predictor, "uncertainty", False)),
    }


def _error(status: int, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status, headers=headers)


def _wants_json(fmt: str | None, accept: str) -> bool:
    """``?format=`` decides; without it, JSON when the client accepts JSON and not PNG first."""
    if fmt is not None:
        if fmt not in ("png", "json"):
            raise ImageRejected(400, f"format must be 'png' or 'json', got {fmt!r}")
        return fmt == "json"
    kinds = [part.split(";")[0].strip().lower() for part in accept.split(",")]
    if "application/json" not in kinds:
        return False
    return "image/png" not in kinds or kinds.index("application/json") < kinds.index("image/png")


def _rss_bytes() -> dict[str, int]:
    """Resident and peak resident memory of this process (Linux), for ``/health``."""
    out: dict[str, int] = {}
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                out["rss_bytes" if key == "VmRSS" else "peak_rss_bytes"] = int(value.split()[0]) * 1024
    except OSError:
        pass
    return out


class _Runtime:
    """Per-event-loop state: the inference queue's worker and the decode thread limiter."""

    def __init__(self, queue: InferenceQueue):
        self.queue = queue
        self.in_flight = 0
        self._limiter: anyio.CapacityLimiter | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def ensure_started(self) -> None:
        loop = asyncio.get_running_loop()
        if self._loop is not loop:
            self._loop = loop
            self._limiter = anyio.CapacityLimiter(DECODE_THREADS)
        self.queue.start()

    async def in_thread(self, fn, *args, **kwargs):
        """Run CPU work (decode, encode) off the event loop, at most DECODE_THREADS at once."""
        self.ensure_started()
        return await anyio.to_thread.run_sync(lambda: fn(*args, **kwargs), limiter=self._limiter)


@dataclass(frozen=True)
class Limits:
    """What the service accepts; :func:`create_app` documents each, and their defaults."""

    max_upload_bytes: int
    max_pixels: int
    max_batch: int
    max_queue: int
    batch_wait_s: float
    request_timeout_s: float
    upload_stall_timeout_s: float

    def describe(self) -> dict[str, Any]:
        """The limits as ``GET /model`` reports them."""
        return {"max_upload_bytes": self.max_upload_bytes, "max_pixels": self.max_pixels,
                "max_batch": self.max_batch, "max_queue": self.max_queue,
                "accepted_formats": list(ACCEPTED_FORMATS), "file_field": FILE_FIELD}


@dataclass(frozen=True)
class Service:
    """What the handlers share, kept on ``app.state.service``."""

    labels: LabelSet
    info: dict[str, Any]
    limits: Limits
    overlay_alpha: float
    runtime: _Runtime


def predict_masks(predictor: Any,
                  images: Sequence[np.ndarray]) -> list[tuple[np.ndarray, np.ndarray | None]]:
    """The inference queue's work: each image's mask and, when the predictor computes it, its
    entropy map (else None). Runs on the inference thread; only these leave it:
    probabilities (C x H x W floats) are dropped here rather than held while responses are
    encoded."""
    if len(images) > 1 and hasattr(predictor, "predict_batch"):
        predictions = predictor.predict_batch(list(images))
    else:
        predictions = [predictor.predict(image) for image in images]
    return [(np.asarray(p.mask), getattr(p, "entropy", None)) for p in predictions]


# -- handlers ---------------------------------------------------------------------------------

def _service(request: Request) -> Service:
    return request.app.state.service


async def health(request: Request) -> JSONResponse:
    """``GET /health``: the queue, the worker and memory; 503 once the worker has stopped."""
    runtime = _service(request).runtime
    stats, alive = runtime.queue.stats, runtime.queue.alive
    body = {"status": "ok" if alive else "inference worker stopped",
            "queue_waiting": runtime.queue.waiting, "in_flight": runtime.in_flight,
            "requests": stats.requests, "batches": stats.batches,
            "largest_batch": stats.largest_batch, "errors": stats.errors,
            "inference_busy_s": round(stats.busy_s, 3), **_rss_bytes()}
    return JSONResponse(body, status_code=200 if alive else 503)


async def model(request: Request) -> dict[str, Any]:
    """``GET /model``: the model, its classes and colours, and the limits."""
    service = _service(request)
    return {**service.info, "num_classes": service.labels.num_classes,
            "classes": legend(service.labels), "limits": service.limits.describe()}


async def predict(request: Request, format: str | None = None) -> Response:
    """``POST /predict``: the mask of the uploaded image, as a PNG or JSON (``format``)."""
    wants_json = _wants_json(format, request.headers.get("accept", ""))
    service = _service(request)
    runtime, admitted = service.runtime, service.limits.max_queue
    # Admitted requests are counted before their bodies are read, so that a crowd of uploads
    # is refused before it is buffered: at most max_queue uploads and images in memory.
    if runtime.in_flight >= admitted:
        return _error(503, f"server busy: {admitted} requests in progress, retry shortly",
                      headers={"Retry-After": "1"})
    runtime.in_flight += 1
    try:
        return await _predict(service, request, wants_json)
    finally:
        runtime.in_flight -= 1


async def _predict(service: Service, request: Request, wants_json: bool) -> Response:
    runtime, limits = service.runtime, service.limits
    runtime.ensure_started()
    upload = await read_upload(request, max_bytes=limits.max_upload_bytes,
                               stall_timeout_s=limits.upload_stall_timeout_s)
    decoded = await runtime.in_thread(decode_image, upload.data, max_pixels=limits.max_pixels,
                                      in_channels=service.info.get("in_channels"))
    del upload  # the compressed bytes are not needed past decoding
    try:
        mask, entropy = await asyncio.wait_for(runtime.queue.submit(decoded.array),
                                               limits.request_timeout_s)
    except QueueFull as e:
        return _error(503, f"server busy: {e}; retry shortly", headers={"Retry-After": "1"})
    except asyncio.TimeoutError:
        return _error(504, f"prediction took longer than {limits.request_timeout_s:g} s")
    except (ValueError, PixelwiseError) as e:
        # The model cannot take this image (NaN pixels, a scale too small, wrong channels...).
        return _error(422, f"cannot predict this image: {e}")
    if mask.shape != decoded.size:
        return _error(500, f"model returned a {mask.shape} mask for a {decoded.size} image")
    labels = service.labels
    if wants_json:
        body = await runtime.in_thread(json_result, decoded.array, mask, labels,
                                       service.overlay_alpha, entropy)
        return JSONResponse(body)
    png = await runtime.in_thread(encode_mask_png, mask, labels.palette, labels.names)
    # Pixel counts per class index, so a PNG client can read the areas without decoding.
    areas = ",".join(str(n) for n in class_pixels(mask, labels.num_classes))
    return Response(png, media_type="image/png",
                    headers={"Content-Disposition": 'inline; filename="mask.png"',
                             "X-Class-Areas": areas})


async def index() -> FileResponse:
    """``GET /``: the web page."""
    return FileResponse(STATIC_DIR / "index.html", media_type="text/html",
                        headers={"Content-Security-Policy": PAGE_CSP,
                                 "X-Content-Type-Options": "nosniff"})


async def _rejected(request: Request, exc: ImageRejected) -> JSONResponse:
    return _error(exc.status, exc.message)


async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
    return _error(exc.status_code, str(exc.detail), headers=getattr(exc, "headers", None))


async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
    problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
    return _error(400, f"invalid request: {problems}")


async def _internal(request: Request, exc: Exception) -> JSONResponse:
    return _error(500, f"internal server error ({type(exc).__name__})")


# Every error, FastAPI's own included, answers with the same {"error": ...} body.
EXCEPTION_HANDLERS = {ImageRejected: _rejected, StarletteHTTPException: _http_error,
                      RequestValidationError: _invalid, Exception: _internal}


@asynccontextmanager
async def _lifespan(app: FastAPI):
    runtime = app.state.service.runtime
    runtime.ensure_started()
    yield
    await runtime.queue.stop()
    runtime.queue.close()


# -- the app ----------------------------------------------------------------------------------

def create_app(predictor: Any, *, max_upload_bytes: int = 20 * 1024 * 1024,
               max_pixels: int = 4096 * 4096, max_batch: int = 1, max_queue: int = 32,
               batch_wait_s: float = 0.005, request_timeout_s: float = 120.0,
               upload_stall_timeout_s: float = 30.0, overlay_alpha: float = 0.5,
               model_info: dict[str, Any] | None = None) -> FastAPI:
    """Build the FastAPI app that serves ``predictor``.

    Args:
        predictor: an object with ``predict(image (H, W, C)) -> Prediction`` (``.mask`` (H, W))
            and ``labels`` (a :class:`~pixelwise.data.labels.LabelSet`); ``predict_batch(list)`` is
            used when present.
        max_upload_bytes: the largest uploaded file; larger ones get 413 while streaming.
        max_pixels: the largest width x height, checked on the header before decoding (413).
        max_batch: the most equal-sized requests run as one batch (1: one by one, the better
            choice on a CPU, where a batch multiplies activation memory for no speed-up).
        max_queue: the most requests admitted at once (waiting or being read); more get 503.
        batch_wait_s: how long a partial batch waits for more requests to join.
        request_timeout_s: a request waiting longer for its prediction gets 504.
        upload_stall_timeout_s: an upload whose body stops arriving for this long gets 408,
            freeing its admission slot.
        overlay_alpha: the mask's opacity in the JSON answer's overlay PNG.
        model_info: overrides for what ``GET /model`` reports (name, backend, ...).

    Returns:
        The app; run it with any ASGI server (``pixelwise serve`` uses uvicorn).
    """
    if max_upload_bytes < 1 or max_pixels < 1:
        raise ValueError(f"max_upload_bytes and max_pixels must be >= 1, got "
                         f"{max_upload_bytes}, {max_pixels}")
    limits = Limits(max_upload_bytes, max_pixels, max_batch, max_queue, batch_wait_s,
                    request_timeout_s, upload_stall_timeout_s)
    queue = InferenceQueue(partial(predict_masks, predictor), max_batch=max_batch,
                           max_queue=max_queue, batch_wait_s=batch_wait_s)
    service = Service(labels=predictor.labels,
                      info={**describe_predictor(predictor), **(model_info or {})},
                      limits=limits, overlay_alpha=overlay_alpha, runtime=_Runtime(queue))
    app = FastAPI(title="pixelwise", summary="Semantic segmentation service", lifespan=_lifespan,
                  docs_url="/docs", redoc_url=None, exception_handlers=EXCEPTION_HANDLERS)
    app.state.service = service
    app.add_api_route("/health", health, methods=["GET"])
    app.add_api_route("/model", model, methods=["GET"])
    app.add_api_route("/predict", predict, methods=["POST"])
    app.add_api_route("/", index, methods=["GET"], include_in_schema=False)
    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
    return app
