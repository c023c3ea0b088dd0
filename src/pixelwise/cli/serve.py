"""``pixelwise serve``: serve a checkpoint over HTTP with uvicorn."""
from __future__ import annotations

from pathlib import Path

import click

from ..errors import PixelwiseError
from .options import (DEVICE_HELP, FiniteFloatRange, checkpoints_option, parse_device,
                      postprocess_option, resolve_ensemble)


@click.command("serve")
@checkpoints_option("Checkpoint to serve (.pt or .onnx); repeat for an ensemble, or give a "
                    "folder of folds (train --folds).", exists=True)
@postprocess_option()
@click.option("--uncertainty", is_flag=True,
              help="Also answer JSON requests with the entropy map (uncertainty_png), which "
                   "the page can show as a layer.")
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to listen on (0.0.0.0 for every interface).")
@click.option("--port", default=8000, show_default=True, type=click.IntRange(0, 65535),
              help="TCP port (0 picks a free one).")
@click.option("--backend", type=click.Choice(["auto", "torch", "onnxruntime"]), default="auto",
              show_default=True, help="Inference backend; auto: onnxruntime for an .onnx file, "
                                      "torch for a checkpoint.")
@click.option("--device", default="cpu", show_default=True, callback=parse_device,
              help=DEVICE_HELP)
@click.option("--tile-size", type=click.IntRange(min=16), default=None,
              help="Predict large images in tiles of this size (default: whole image).")
@click.option("--max-upload-mb", type=FiniteFloatRange(min=0, min_open=True), default=20.0,
              show_default=True, help="Largest accepted upload, in MiB (413 above).")
@click.option("--max-pixels", type=click.IntRange(min=1), default=4096 * 4096, show_default=True,
              help="Largest accepted width x height, checked before decoding (413 above).")
@click.option("--max-batch", type=click.IntRange(min=1), default=None,
              help="Most concurrent equal-sized requests run as one batch (default: 1 on the "
                   "CPU, where batching costs memory and gains no speed; 4 on a GPU).")
@click.option("--max-queue", type=click.IntRange(min=1), default=32, show_default=True,
              help="Most requests admitted at once; more get 503.")
@click.option("--threads", type=click.IntRange(min=1), default=None,
              help="Inference threads (torch intra-op or ONNX Runtime; default: one per core).")
@click.option("--log-level", type=click.Choice(["critical", "error", "warning", "info", "debug"]),
              default="info", show_default=True, help="uvicorn's log level.")
def command(checkpoints: tuple[str, ...], no_postprocess: bool, uncertainty: bool, host: str,
            port: int, backend: str, device: str, tile_size: int | None, max_upload_mb: float,
            max_pixels: int, max_batch: int | None, max_queue: int, threads: int | None,
            log_level: str) -> None:
    """Serve a model over HTTP: a web page at /, POST /predict, GET /model, GET /health.

    POST /predict takes an image (multipart field "file", or the raw bytes with an image/*
    Content-Type) and answers with the mask as a palette PNG, or with JSON (class areas and
    base64 mask and overlay PNGs) for ?format=json or Accept: application/json.

    \b
    Example:
      pixelwise serve --checkpoint runs/camvid/checkpoints/best.pt --port 8000
      curl -F file=@street.png http://127.0.0.1:8000/predict -o mask.png
      curl -F file=@street.png 'http://127.0.0.1:8000/predict?format=json'
    """
    # Imported here so that `pixelwise --help` does not pay for torch, fastapi and uvicorn.
    try:
        import uvicorn
    except ImportError as e:
        raise PixelwiseError("serving needs the 'serve' extra: pip install 'pixelwise[serve]'") from e
    import torch

    from ..devices import resolve_device
    from ..inference.predict import Predictor
    from .predict import choose_backends
    from ..serve import create_app

    if threads is not None:
        torch.set_num_threads(threads)
    device = str(resolve_device(device))
    ensemble = resolve_ensemble(checkpoints, no_postprocess)
    sources, backend, _ = choose_backends(ensemble.members, backend, fast=False)
    predictor = Predictor(sources, backend=backend, tile_size=tile_size, device=device,
                          threads=threads, uncertainty=uncertainty,
                          postprocess=ensemble.postprocess)
    if max_batch is None:
        # Measured with benchmarks/loadtest.py on a 2-core CPU (16 clients, 360x480): batches
        # of 4 gave 7.2 req/s at 820 MiB peak, one by one 8.3 req/s at 471 MiB.
        max_batch = 1 if backend == "onnxruntime" or torch.device(device).type == "cpu" else 4
    app = create_app(predictor, max_upload_bytes=int(max_upload_mb * 1024 * 1024),
                     max_pixels=max_pixels, max_batch=max_batch, max_queue=max_queue,
                     model_info={"backend": backend,
                                 "checkpoint": ", ".join(Path(c).name for c in checkpoints)})
    # One process: the model is loaded once and its single inference thread bounds memory.
    uvicorn.run(app, host=host, port=port, log_level=log_level, workers=1,
                timeout_graceful_shutdown=5)
