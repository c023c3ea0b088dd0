"""Load test for ``pixelwise serve``: concurrent clients, latency, errors, memory, bad uploads.

By default it writes a tiny random-weight ``unet`` checkpoint, starts ``pixelwise serve`` on
127.0.0.1 (a free port) as a subprocess, and stops it at the end; ``--url`` targets a server
that is already running instead (its memory is read from ``/health``).

Steps: one warm-up request; ``--requests`` predictions from ``--clients`` concurrent clients
(every ``--json-every``-th asks for JSON); server memory before and after; then each malformed
upload (truncated PNG, text file, 0 bytes, 100-megapixel PNG, wrong Content-Type), which must
get its 4xx, and a last good request, which must still succeed. Exit code 1 if any request
failed, any malformed upload got the wrong status, or the server's resident memory grew by
more than ``--max-rss-growth-mib`` under the load.

Example::

    python benchmarks/loadtest.py --output loadtest.json
    python benchmarks/loadtest.py --url http://127.0.0.1:8000 --size 360x480
"""
from __future__ import annotations

import argparse
import io
import json
import os
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
import zlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
from PIL import Image

CAMVID_VAL = Path(__file__).resolve().parents[2] / "shared" / "data" / "camvid" / "val"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--url", help="target a running server instead of starting one")
    p.add_argument("--checkpoint", type=Path, help="checkpoint to serve (default: a tiny unet)")
    p.add_argument("--backend", default="torch", choices=["torch", "onnxruntime"])
    p.add_argument("--base-channels", type=int, default=8, help="width of the tiny unet")
    p.add_argument("--clients", type=int, default=16)
    p.add_argument("--requests", type=int, default=200)
    p.add_argument("--size", default="96x128", help="HxW of the uploaded images")
    p.add_argument("--image", type=Path, help="image to upload (default: first CamVid val image)")
    p.add_argument("--json-every", type=int, default=4, help="every Nth request asks for JSON")
    p.add_argument("--max-batch", type=int, help="server micro-batch size (default: the server's)")
    p.add_argument("--threads", type=int, default=1, help="server torch threads")
    p.add_argument("--timeout", type=float, default=120.0, help="per-request timeout, seconds")
    p.add_argument("--max-rss-growth-mib", type=float, default=256.0,
                   help="fail if the server's resident memory grows more than this under load")
    p.add_argument("--output", type=Path, help="write the JSON report here (default: stdout)")
    return p.parse_args(argv)


# --- inputs ----------------------------------------------------------------------------------

def upload_image(path: Path | None, size: tuple[int, int]) -> bytes:
    """PNG bytes of the test image, resized to ``size`` (H, W)."""
    if path is None and CAMVID_VAL.is_dir():
        path = sorted(CAMVID_VAL.glob("*.png"))[0]
    if path is not None:
        img = Image.open(path).convert("RGB").resize((size[1], size[0]), Image.BILINEAR)
    else:
        rng = np.random.default_rng(0)
        img = Image.fromarray(rng.integers(0, 255, (*size, 3), dtype=np.uint8))
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def giant_png(width: int = 10_000, height: int = 10_000) -> bytes:
    """A valid all-black 100-megapixel greyscale PNG (~100 kB compressed): a decompression bomb."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return (struct.pack(">I", len(data)) + kind + data
                + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))

    comp = zlib.compressobj(9)
    row = b"\x00" * (width + 1)
    idat = b"".join(comp.compress(row) for _ in range(height)) + comp.flush()
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def malformed_cases(good_png: bytes) -> list[tuple[str, dict, int]]:
    """(name, httpx.post keyword arguments, expected status)."""
    noisy = Image.fromarray(np.random.default_rng(1).integers(0, 255, (64, 64, 3), dtype=np.uint8))
    buf = io.BytesIO()
    noisy.save(buf, format="PNG")
    truncated = buf.getvalue()[: len(buf.getvalue()) // 2]
    return [
        ("truncated png", {"files": {"file": ("cut.png", truncated, "image/png")}}, 400),
        ("text file", {"files": {"file": ("notes.txt", b"hello, server\n" * 20, "text/plain")}}, 415),
        # Declared as a PNG: only sniffing the bytes can refuse it.
        ("text file named .png", {"files": {"file": ("notes.png", b"hello, server\n" * 20,
                                                      "image/png")}}, 415),
        ("0 bytes", {"files": {"file": ("empty.png", b"", "image/png")}}, 400),
        ("100-megapixel png", {"files": {"file": ("bomb.png", giant_png(), "image/png")}}, 413),
        ("wrong content type", {"content": good_png,
                                "headers": {"Content-Type": "application/json"}}, 415),
    ]


# --- the server ------------------------------------------------------------------------------

def tiny_checkpoint(folder: Path, base_channels: int) -> Path:
    import torch

    from pixelwise import save_checkpoint
    from pixelwise.models import build_model

    torch.manual_seed(0)
    kwargs = dict(in_channels=3, num_classes=11, base_channels=base_channels, depth=4)
    names = ["Sky", "Building", "Pole", "Road", "Pavement", "Tree", "SignSymbol", "Fence",
             "Car", "Pedestrian", "Bicyclist"]
    return save_checkpoint(folder / "loadtest_unet.pt", build_model("unet", **kwargs), "unet",
                           kwargs, names)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(checkpoint: Path, args: argparse.Namespace) -> tuple[subprocess.Popen, str]:
    port = free_port()
    cmd = [sys.executable, "-c", "from pixelwise.cli import main; main()", "serve",
           "--checkpoint", str(checkpoint), "--host", "127.0.0.1", "--port", str(port),
           "--threads", str(args.threads), "--backend", args.backend, "--log-level", "warning"]
    if args.max_batch is not None:
        cmd += ["--max-batch", str(args.max_batch)]
    proc = subprocess.Popen(cmd)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with code {proc.returncode}")
        try:
            if httpx.get(url + "/health", timeout=2).status_code == 200:
                return proc, url
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    proc.terminate()
    raise RuntimeError("server did not answer /health within 120 s")


# --- the load --------------------------------------------------------------------------------

def run_load(url: str, png: bytes, args: argparse.Namespace) -> dict:
    latencies: list[float] = []
    statuses: dict[str, int] = {}
    failures: list[str] = []
    lock = threading.Lock()
    counter = iter(range(args.requests))

    def client() -> None:
        with httpx.Client(base_url=url, timeout=args.timeout) as http:
            while True:
                with lock:
                    i = next(counter, None)
                if i is None:
                    return
                params = {"format": "json"} if args.json_every and i % args.json_every == 0 else {}
                start = time.perf_counter()
                try:
                    r = http.post("/predict", params=params,
                                  files={"file": ("frame.png", png, "image/png")})
                    status = str(r.status_code)
                    ok = r.status_code == 200 and len(r.content) > 0
                except httpx.HTTPError as e:
                    status, ok = type(e).__name__, False
                elapsed = time.perf_counter() - start
                with lock:
                    latencies.append(elapsed)
                    statuses[status] = statuses.get(status, 0) + 1
                    if not ok:
                        failures.append(status)

    start = time.perf_counter()
    with ThreadPoolExecutor(args.clients) as pool:
        for f in [pool.submit(client) for _ in range(args.clients)]:
            f.result()
    wall = time.perf_counter() - start
    lat_ms = np.asarray(latencies) * 1000
    return {
        "requests": len(latencies), "clients": args.clients, "wall_s": round(wall, 3),
        "throughput_rps": round(len(latencies) / wall, 2),
        "latency_ms": {"p50": round(float(np.percentile(lat_ms, 50)), 1),
                       "p90": round(float(np.percentile(lat_ms, 90)), 1),
                       "p99": round(float(np.percentile(lat_ms, 99)), 1),
                       "max": round(float(lat_ms.max()), 1),
                       "mean": round(float(lat_ms.mean()), 1)},
        "errors": len(failures), "status_counts": statuses,
    }


def check_malformed(url: str, png: bytes) -> list[dict]:
    out = []
    with httpx.Client(base_url=url, timeout=60) as http:
        for name, kwargs, expected in malformed_cases(png):
            r = http.post("/predict", **kwargs)
            try:
                error = r.json().get("error")
            except ValueError:
                error = None
            out.append({"case": name, "expected": expected, "status": r.status_code,
                        "error": error, "ok": r.status_code == expected and bool(error)})
    return out


def health(url: str) -> dict:
    return httpx.get(url + "/health", timeout=10).json()


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    h, w = (int(v) for v in args.size.lower().split("x"))
    png = upload_image(args.image, (h, w))
    proc = None
    with tempfile.TemporaryDirectory() as tmp:
        try:
            if args.url:
                url = args.url.rstrip("/")
            else:
                checkpoint = args.checkpoint or tiny_checkpoint(Path(tmp), args.base_channels)
                proc, url = start_server(checkpoint, args)
            model = httpx.get(url + "/model", timeout=10).json()
            warm = httpx.post(url + "/predict", files={"file": ("w.png", png, "image/png")},
                              timeout=args.timeout)
            warm.raise_for_status()
            before = health(url)
            load = run_load(url, png, args)
            after = health(url)
            malformed = check_malformed(url, png)
            last = httpx.post(url + "/predict", files={"file": ("w.png", png, "image/png")},
                              timeout=args.timeout)
            final = health(url)
        finally:
            if proc is not None:
                proc.terminate()
                try:
                    proc.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    proc.kill()
    mib = 1024 * 1024
    report = {
        "model": {k: model.get(k) for k in ("name", "backend", "num_classes")},
        "image": {"height": h, "width": w, "png_bytes": len(png)},
        "load": load,
        "server_memory_mib": {
            "rss_before": round(before.get("rss_bytes", 0) / mib, 1),
            "rss_after": round(after.get("rss_bytes", 0) / mib, 1),
            "peak_rss": round(after.get("peak_rss_bytes", 0) / mib, 1),
        },
        "batching": {"batches": after["batches"] - before["batches"],
                     "requests": after["requests"] - before["requests"],
                     "largest_batch": after["largest_batch"]},
        "malformed": malformed,
        "still_serving": last.status_code == 200 and final["status"] == "ok",
        "server_cpus": os.cpu_count(),
    }
    b = report["batching"]
    b["mean_batch"] = round(b["requests"] / max(b["batches"], 1), 2)
    memory = report["server_memory_mib"]
    memory["growth"] = round(memory["rss_after"] - memory["rss_before"], 1)
    memory["bounded"] = memory["growth"] <= args.max_rss_growth_mib
    text = json.dumps(report, indent=2)
    if args.output:
        args.output.write_text(text + "\n")
    print(text)
    ok = (load["errors"] == 0 and all(m["ok"] for m in malformed) and report["still_serving"]
          and memory["bounded"])
    print(f"{load['requests']} requests, {load['clients']} clients: "
          f"{load['throughput_rps']} req/s, p50 {load['latency_ms']['p50']} ms, "
          f"p99 {load['latency_ms']['p99']} ms, {load['errors']} errors; "
          f"RSS {report['server_memory_mib']['rss_before']} -> "
          f"{report['server_memory_mib']['rss_after']} MiB"
          f"{'' if memory['bounded'] else ' (unbounded)'}; malformed "
          f"{sum(m['ok'] for m in malformed)}/{len(malformed)} right; "
          f"{'PASS' if ok else 'FAIL'}", file=sys.stderr)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
