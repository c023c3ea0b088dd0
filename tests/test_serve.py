"""The HTTP service: uploads, limits, answers, batching, and one real checkpoint end to end."""
from __future__ import annotations

import asyncio
import base64
import io
import struct
import threading
import time
import warnings
import zlib
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("fastapi")
with warnings.catch_warnings():
    # Starlette's notice that it prefers another HTTP client package; httpx works.
    warnings.simplefilter("ignore")
    from fastapi.testclient import TestClient  # noqa: E402

from pixelwise.inference.predict import Predictor  # noqa: E402
from pixelwise.data.labels import LabelSet  # noqa: E402
from pixelwise.serve import create_app  # noqa: E402
from pixelwise.serve.batching import InferenceQueue, QueueFull  # noqa: E402
from pixelwise.serve.images import sniff_format  # noqa: E402

PALETTE = [(0, 0, 0), (0, 255, 0), (255, 0, 0)]
LIMIT = 256 * 1024  # upload bytes; the 100-megapixel PNG is ~100 kB, under it


class FakePredictor:
    """The Predictor interface with a rule a test can compute by hand: class = red // 100."""

    labels = LabelSet.from_names(["dark", "mid", "bright"], PALETTE)
    model_name = "fake"
    backend = "fake"
    tile_size = None

    def __init__(self, in_channels: int = 3, gate: threading.Event | None = None,
                 error: Exception | None = None):
        self.in_channels = in_channels
        self.gate = gate
        self.error = error
        self.seen: list[tuple] = []
        self.images: list[np.ndarray] = []
        self.batches: list[int] = []
        self.active = 0
        self.max_active = 0  # most predict calls running at once

    def predict(self, image: np.ndarray) -> SimpleNamespace:
        return self.predict_batch([image])[0]

    def predict_batch(self, images: list[np.ndarray]) -> list[SimpleNamespace]:
        self.active += 1
        self.max_active = max(self.max_active, self.active)
        try:
            return self._predict_batch(images)
        finally:
            self.active -= 1

    def _predict_batch(self, images: list[np.ndarray]) -> list[SimpleNamespace]:
        if self.gate is not None:
            self.gate.wait(timeout=10)
        if self.error is not None:
            raise self.error
        self.batches.append(len(images))
        out = []
        for image in images:
            self.seen.append((image.shape, image.dtype))
            self.images.append(image)
            mask = np.clip(image[..., 0].astype(np.int64) // 100, 0, 2).astype(np.uint8)
            out.append(SimpleNamespace(mask=mask, probs=None))
        return out


def png_bytes(array: np.ndarray, **kw) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array, **kw).save(buf, format="PNG")
    return buf.getvalue()


def striped_image() -> np.ndarray:
    """6 x 10 RGB: red 0 in columns 0-1, 150 in 2-4, 250 in 5-9 -> classes 0, 1, 2."""
    img = np.zeros((6, 10, 3), dtype=np.uint8)
    img[:, 2:5, 0] = 150
    img[:, 5:, 0] = 250
    img[:, :, 2] = 40
    return img


def giant_png(width: int = 10_000, height: int = 10_000) -> bytes:
    """A valid all-black 100-megapixel greyscale PNG that compresses to about 100 kB."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return (struct.pack(">I", len(data)) + kind + data
                + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))

    comp = zlib.compressobj(9)
    row = b"\x00" * (width + 1)  # filter byte 0 + one byte per pixel
    idat = b"".join(comp.compress(row) for _ in range(height)) + comp.flush()
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat)
            + chunk(b"IEND", b""))


@pytest.fixture(scope="module")
def bomb() -> bytes:
    return giant_png()


@pytest.fixture
def fake() -> FakePredictor:
    return FakePredictor()


@pytest.fixture
def client(fake):
    app = create_app(fake, max_upload_bytes=LIMIT, max_pixels=512 * 512)
    with TestClient(app) as c:
        yield c


def post_file(client, data: bytes, content_type: str = "image/png", name: str = "x.png", **kw):
    return client.post("/predict", files={"file": (name, data, content_type)}, **kw)


def assert_serving(client) -> None:
    """A good request still works and the worker is alive."""
    r = post_file(client, png_bytes(striped_image()))
    assert r.status_code == 200, r.text
    assert client.get("/health").json()["status"] == "ok"


# --- answers ---------------------------------------------------------------------------------

def test_png_round_trip_gives_class_indices_and_palette(client):
    r = post_file(client, png_bytes(striped_image()))
    assert r.status_code == 200
    assert r.headers["content-type"] == "image/png"
    mask_img = Image.open(io.BytesIO(r.content))
    assert mask_img.mode == "P"
    mask = np.asarray(mask_img)
    expected = np.zeros((6, 10), dtype=np.uint8)
    expected[:, 2:5] = 1
    expected[:, 5:] = 2
    np.testing.assert_array_equal(mask, expected)
    assert mask_img.getpalette()[:9] == [0, 0, 0, 0, 255, 0, 255, 0, 0]
    assert r.headers["x-class-areas"] == "12,18,30"  # 6 rows x 2, 3 and 5 columns


def test_json_answer_has_areas_and_overlay(client):
    r = post_file(client, png_bytes(striped_image()), params={"format": "json"})
    assert r.status_code == 200
    body = r.json()
    assert (body["width"], body["height"]) == (10, 6)
    assert [(c["name"], c["pixels"]) for c in body["classes"]] == [("dark", 12), ("mid", 18),
                                                                   ("bright", 30)]
    assert body["classes"][2]["fraction"] == pytest.approx(0.5)
    assert body["classes"][1]["color"] == [0, 255, 0]
    over = np.asarray(Image.open(io.BytesIO(base64.b64decode(body["overlay_png"]))))
    assert over.shape == (6, 10, 3)
    # Column 3: pixel (150, 0, 40) blended half-and-half with class 1's green (0, 255, 0).
    np.testing.assert_array_equal(over[0, 3], [75, 128, 20])
    mask = np.asarray(Image.open(io.BytesIO(base64.b64decode(body["mask_png"]))))
    assert mask[0, 9] == 2


def test_accept_header_selects_json(client):
    data = png_bytes(striped_image())
    assert post_file(client, data, headers={"Accept": "application/json"}).headers[
        "content-type"] == "application/json"
    assert post_file(client, data, headers={"Accept": "image/png, application/json"}).headers[
        "content-type"] == "image/png"
    assert post_file(client, data, headers={"Accept": "*/*"}).headers["content-type"] == "image/png"


def test_raw_body_upload(client):
    r = client.post("/predict", content=png_bytes(striped_image()),
                    headers={"Content-Type": "image/png"})
    assert r.status_code == 200
    assert np.asarray(Image.open(io.BytesIO(r.content)))[0, 0] == 0


def test_jpeg_and_greyscale_upload_become_model_channels():
    fake = FakePredictor(in_channels=1)
    with TestClient(create_app(fake)) as c:
        buf = io.BytesIO()
        Image.fromarray(striped_image()).save(buf, format="JPEG", quality=95)
        assert post_file(c, buf.getvalue(), "image/jpeg", "x.jpg").status_code == 200
        deep = (np.arange(24, dtype=np.uint16).reshape(4, 6) * 2000)
        assert post_file(c, png_bytes(deep)).status_code == 200
    assert fake.seen[0] == ((6, 10, 1), np.dtype(np.uint8))
    # 16-bit greyscale keeps its depth.
    assert fake.seen[1] == ((4, 6, 1), np.dtype(np.uint16))


def test_colour_upload_to_a_grey_model_is_converted_as_files_are():
    fake = FakePredictor(in_channels=1)
    with TestClient(create_app(fake)) as c:
        assert post_file(c, png_bytes(striped_image())).status_code == 200
    # ITU-R 601-2 luma, rounded, of (0 | 150 | 250, 0, 40): 0.114 x 40 = 4.56 -> 5,
    # 0.299 x 150 + 4.56 = 49.41 -> 49, 0.299 x 250 + 4.56 = 79.31 -> 79; the same
    # conversion `pixelwise predict` applies to a colour file for a greyscale model.
    assert fake.images[0][0, :, 0].tolist() == [5, 5, 49, 49, 49, 79, 79, 79, 79, 79]


def test_model_and_health(client):
    m = client.get("/model").json()
    assert m["name"] == "fake" and m["backend"] == "fake" and m["in_channels"] == 3
    assert [c["name"] for c in m["classes"]] == ["dark", "mid", "bright"]
    assert m["classes"][2]["color"] == [255, 0, 0]
    assert m["limits"]["max_pixels"] == 512 * 512
    h = client.get("/health")
    assert h.status_code == 200 and h.json()["status"] == "ok"


def test_binary_model_legend_gets_background():
    fake = FakePredictor()
    fake.labels = LabelSet.from_names(["membrane"], [(0, 255, 0)], num_outputs=1)
    with TestClient(create_app(fake)) as c:
        classes = c.get("/model").json()["classes"]
        assert [(x["name"], x["color"]) for x in classes] == [("background", [0, 0, 0]),
                                                              ("membrane", [0, 255, 0])]
        # columns 0-1 dark (class 0), 2-4 mid (class 1): 6 x 2 and 6 x 3 pixels
        r = post_file(c, png_bytes(striped_image()[:, :5].copy()), params={"format": "json"})
        assert [(x["name"], x["pixels"]) for x in r.json()["classes"]] == [("background", 12),
                                                                          ("membrane", 18)]


class ManyClassPredictor(FakePredictor):
    """300 classes, more than a palette PNG holds: class = red + green (0..510)."""

    labels = LabelSet.from_count(300)

    def _predict_batch(self, images):
        return [SimpleNamespace(mask=image[..., 0].astype(np.int64) + image[..., 1], probs=None)
                for image in images]


def test_over_256_classes_answer_a_16_bit_png():
    image = np.zeros((2, 3, 3), dtype=np.uint8)
    image[0, 0, :2] = (200, 99)  # class 299
    image[1, 2, :2] = (7, 0)     # class 7
    with TestClient(create_app(ManyClassPredictor())) as c:
        r = post_file(c, png_bytes(image))
        assert r.status_code == 200, r.text
        mask = Image.open(io.BytesIO(r.content))
        assert mask.mode == "I;16"
        assert np.asarray(mask).tolist() == [[299, 0, 0], [0, 0, 7]]
        areas = [int(n) for n in r.headers["x-class-areas"].split(",")]
        assert len(areas) == 300 and (areas[0], areas[7], areas[299]) == (4, 1, 1)
        body = post_file(c, png_bytes(image), params={"format": "json"}).json()
        assert body["classes"][299] == {"index": 299, "name": "class 299",
                                        "color": list(LabelSet.from_count(300).palette[299]),
                                        "pixels": 1, "fraction": 1 / 6}


def test_page_and_static_files(client):
    page = client.get("/")
    assert page.status_code == 200 and 'id="overlay"' in page.text
    assert "script-src 'self'" in page.headers["content-security-policy"]
    assert "http" not in page.text.replace("http-equiv", "")  # no CDN
    assert client.get("/static/app.js").status_code == 200
    assert client.get("/static/style.css").status_code == 200


# --- refusals: each gets its 4xx with a JSON error, and the server keeps serving -------------

def _truncated_in_data() -> bytes:
    noisy = np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)
    data = png_bytes(noisy)
    return data[: len(data) // 2]


MALFORMED = {
    "truncated png header": (lambda b: png_bytes(striped_image())[:30], "image/png", 400),
    "truncated png data": (lambda b: _truncated_in_data(), "image/png", 400),
    "text file": (lambda b: b"just some text\n" * 10, "text/plain", 415),
    "text file labelled png": (lambda b: b"just some text\n" * 10, "image/png", 415),
    "zero bytes": (lambda b: b"", "image/png", 400),
    "100 megapixels": (lambda b: b, "image/png", 413),
    "wrong content type": (lambda b: png_bytes(striped_image()), "application/json", 415),
}


@pytest.mark.parametrize("case", list(MALFORMED))
def test_malformed_upload_gets_4xx_and_server_keeps_serving(client, bomb, case):
    make, content_type, status = MALFORMED[case]
    r = post_file(client, make(bomb), content_type)
    assert r.status_code == status, r.text
    assert r.headers["content-type"] == "application/json"
    assert isinstance(r.json()["error"], str) and r.json()["error"]
    assert_serving(client)


def test_bomb_is_refused_from_its_header(client, bomb, fake):
    r = post_file(client, bomb)
    assert r.status_code == 413 and "10000x10000" in r.json()["error"]
    assert fake.seen == []  # never reached the model


def test_oversized_upload_is_refused(client):
    big = np.random.default_rng(1).integers(0, 255, (400, 400, 3), dtype=np.uint8)
    data = png_bytes(big)  # ~480 kB of noise > the 256 kB limit
    r = post_file(client, data)
    assert r.status_code == 413 and "too large" in r.json()["error"]
    r = client.post("/predict", content=data, headers={"Content-Type": "image/png"})
    assert r.status_code == 413
    assert_serving(client)


@pytest.fixture(scope="module")
def live_server():
    """The app under a real uvicorn on 127.0.0.1, for what TestClient cannot show (streaming)."""
    import uvicorn

    app = create_app(FakePredictor(), max_upload_bytes=LIMIT)
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="error"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.02)
    port = server.servers[0].sockets[0].getsockname()[1]
    yield "127.0.0.1", port
    server.should_exit = True
    thread.join(timeout=10)


def _raw_request(address, head: bytes, body_chunks, pause_s: float = 0.0) -> tuple[bytes, int]:
    """Send a request by hand; returns the response and how many body chunks went out."""
    import socket

    sent = 0
    with socket.create_connection(address, timeout=10) as sock:
        sock.sendall(head)
        try:
            for chunk in body_chunks:
                sock.sendall(chunk)
                sent += 1
                time.sleep(pause_s)
                sock.setblocking(False)
                try:
                    if sock.recv(1, socket.MSG_PEEK):
                        break  # the server answered already
                except BlockingIOError:
                    pass
                finally:
                    sock.setblocking(True)
        except (BrokenPipeError, ConnectionResetError):
            pass
        response = b""
        while True:
            try:
                data = sock.recv(65536)
            except ConnectionResetError:
                break
            if not data:
                break
            response += data
    return response, sent


def test_oversized_upload_is_refused_while_streaming(live_server):
    # Chunked upload without a Content-Length: refused once past the limit, long before
    # the 8 MB on offer have been sent.
    head = (b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: image/png\r\n"
            b"Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n")
    piece = b"\x00" * (64 * 1024)
    chunks = (b"%x\r\n" % len(piece) + piece + b"\r\n" for _ in range(128))
    response, sent = _raw_request(live_server, head, chunks, pause_s=0.02)
    assert response.startswith(b"HTTP/1.1 413"), response[:200]
    assert b'"error"' in response
    print("chunks sent before the 413:", sent)
    assert sent < 100


def test_declared_oversized_upload_is_refused_before_the_body(live_server):
    head = (b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: image/png\r\n"
            b"Content-Length: 104857600\r\nConnection: close\r\n\r\n")
    response, sent = _raw_request(live_server, head, [])
    assert response.startswith(b"HTTP/1.1 413") and b"104857600 bytes" in response
    import httpx

    host, port = live_server
    r = httpx.post(f"http://{host}:{port}/predict", files={"file": ("a.png", png_bytes(striped_image()), "image/png")})
    assert r.status_code == 200


@pytest.mark.parametrize("request_kw, status", [
    ({"content": b'{"image": 1}', "headers": {"Content-Type": "application/json"}}, 415),
    ({"content": b"abc"}, 415),  # no Content-Type at all
    ({"data": {"name": "x"}, "files": {"other": ("", b"", "")}}, 400),  # no file part named or with a filename
    ({"content": b"--xyz\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a.png\"\r\n\r\n\x89PNG",
      "headers": {"Content-Type": "multipart/form-data; boundary=xyz"}}, 400),  # cut-off form
    ({"params": {"format": "gif"}, "files": {"file": ("a.png", b"x", "image/png")}}, 400),
])
def test_bad_requests(client, request_kw, status):
    r = client.post("/predict", **request_kw)
    assert r.status_code == status, r.text
    assert "error" in r.json()
    assert_serving(client)


def test_unknown_route_and_method_give_json_errors(client):
    assert client.get("/nope").json() == {"error": "Not Found"}
    r = client.get("/predict")
    assert r.status_code == 405 and "error" in r.json()


def test_model_error_is_422_and_worker_survives():
    fake = FakePredictor(error=ValueError("image smaller than the network's 16 px minimum"))
    with TestClient(create_app(fake)) as c:
        r = post_file(c, png_bytes(striped_image()))
        assert r.status_code == 422 and "16 px" in r.json()["error"]
        fake.error = None
        assert_serving(c)


def test_slow_prediction_times_out_with_504_and_worker_recovers():
    gate = threading.Event()
    fake = FakePredictor(gate=gate)
    with TestClient(create_app(fake, request_timeout_s=0.2)) as c:
        r = post_file(c, png_bytes(striped_image()))
        assert r.status_code == 504
        gate.set()
        assert_serving(c)


def test_full_server_answers_503():
    gate = threading.Event()
    fake = FakePredictor(gate=gate)
    app = create_app(fake, max_queue=1)
    with TestClient(app) as c:
        results = {}
        first = threading.Thread(target=lambda: results.setdefault(
            "first", post_file(c, png_bytes(striped_image())).status_code))
        first.start()
        deadline = time.monotonic() + 5
        while app.state.service.runtime.in_flight < 1 and time.monotonic() < deadline:
            time.sleep(0.01)
        r = post_file(c, png_bytes(striped_image()))
        assert r.status_code == 503 and r.headers["retry-after"] == "1"
        assert "busy" in r.json()["error"]
        gate.set()
        first.join(timeout=10)
        assert results["first"] == 200


def test_concurrent_clients_share_one_batch_on_one_thread():
    gate = threading.Event()
    fake = FakePredictor(gate=gate)
    app = create_app(fake, max_batch=4, max_queue=8)
    queue = app.state.service.runtime.queue
    with TestClient(app) as c:
        statuses: list[int] = []

        def send(image):
            statuses.append(post_file(c, png_bytes(image)).status_code)

        small, wide = striped_image(), np.zeros((6, 12, 3), dtype=np.uint8)
        threads = [threading.Thread(target=send, args=(small,))]
        threads[0].start()
        deadline = time.monotonic() + 5
        while fake.active < 1 and time.monotonic() < deadline:
            time.sleep(0.01)  # until the first request is inside the (blocked) model
        for image, waiting in [(small, 1), (small, 2), (small, 3), (small, 4), (wide, 5)]:
            # One at a time, so the queue order is known: four small ones, then the wide one.
            threads.append(threading.Thread(target=send, args=(image,)))
            threads[-1].start()
            while queue.waiting < waiting and time.monotonic() < deadline:
                time.sleep(0.01)
        assert queue.waiting == 5
        gate.set()
        for t in threads:
            t.join(timeout=10)
    assert statuses == [200] * 6
    assert fake.batches == [1, 4, 1]  # four equal-sized requests ran as one batch
    assert fake.max_active == 1  # never two model calls at once


# --- the batching queue ----------------------------------------------------------------------

def test_queue_batches_equal_sizes_in_arrival_order():
    calls: list[list[tuple]] = []

    def run(images):
        calls.append([im.shape for im in images])
        return [im.shape for im in images]

    async def main():
        q = InferenceQueue(run, max_batch=3, max_queue=10, batch_wait_s=0)
        a, b = np.zeros((4, 4, 3)), np.zeros((5, 4, 3))
        out = await asyncio.gather(*(q.submit(x) for x in [a, a, b, a, a, a, a]))
        await q.stop()
        q.close()
        return out

    out = asyncio.run(main())
    assert out == [(4, 4, 3)] * 2 + [(5, 4, 3)] + [(4, 4, 3)] * 4
    assert [len(c) for c in calls] == [2, 1, 3, 1]
    assert calls[1] == [(5, 4, 3)]


def test_queue_refuses_when_full():
    gate = threading.Event()

    async def main():
        q = InferenceQueue(lambda ims: (gate.wait(5), ims)[1], max_batch=1, max_queue=1, batch_wait_s=0)
        first = asyncio.ensure_future(q.submit(np.zeros((2, 2, 3))))
        await asyncio.sleep(0.05)  # the worker takes it: the queue is empty again but busy
        second = asyncio.ensure_future(q.submit(np.zeros((2, 2, 3))))
        await asyncio.sleep(0)
        with pytest.raises(QueueFull):
            await q.submit(np.zeros((2, 2, 3)))
        gate.set()
        await asyncio.gather(first, second)
        await q.stop()
        q.close()

    asyncio.run(main())


def test_stop_fails_running_and_held_requests_instead_of_leaving_them_waiting():
    gate = threading.Event()

    async def main():
        q = InferenceQueue(lambda ims: (gate.wait(5), ims)[1], max_batch=2, max_queue=10,
                           batch_wait_s=0)
        # a runs (blocked); b, of another size, is held for the next batch; c waits queued.
        jobs = [asyncio.ensure_future(q.submit(np.zeros(s))) for s in
                [(4, 4, 3), (5, 4, 3), (4, 4, 3)]]
        for _ in range(100):
            await asyncio.sleep(0.01)
            if q._held is not None:
                break
        assert q._held is not None
        await q.stop()
        gate.set()
        q.close()
        done, pending = await asyncio.wait(jobs, timeout=2)
        assert not pending
        for job in jobs:
            with pytest.raises(RuntimeError, match="shutting down"):
                job.result()

    asyncio.run(main())


def test_stalled_upload_gets_408_instead_of_holding_its_slot():
    from starlette.requests import Request

    from pixelwise.serve.images import ImageRejected
    from pixelwise.serve.upload import read_upload

    async def receive():
        if not sent:
            sent.append(True)
            return {"type": "http.request", "body": b"\x89PNG", "more_body": True}
        await asyncio.sleep(60)  # the client stops sending and never hangs up

    sent: list = []
    scope = {"type": "http", "method": "POST", "path": "/predict",
             "headers": [(b"content-type", b"image/png")]}
    with pytest.raises(ImageRejected) as e:
        asyncio.run(read_upload(Request(scope, receive), max_bytes=1000, stall_timeout_s=0.2))
    assert e.value.status == 408 and "stalled" in e.value.message


def test_sniff_format():
    assert sniff_format(png_bytes(striped_image())) == "png"
    assert sniff_format(b"\xff\xd8\xff\xe0rest") == "jpeg"
    assert sniff_format(b"RIFF\x00\x00\x00\x00WEBPVP8 ") == "webp"
    assert sniff_format(b"GIF89a") is None
    assert sniff_format(b"") is None


# --- a real checkpoint and the real Predictor --------------------------------------------------

@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory):
    import torch

    from pixelwise import save_checkpoint
    from pixelwise.models import build_model

    torch.manual_seed(0)
    kwargs = dict(in_channels=3, num_classes=3, base_channels=4, depth=2)
    model = build_model("unet", **kwargs)
    path = tmp_path_factory.mktemp("ckpt") / "tiny.pt"
    save_checkpoint(path, model, "unet", kwargs, ["sky", "road", "car"],
                    palette=[(128, 128, 128), (128, 64, 128), (64, 0, 128)])
    return path


def test_real_checkpoint_end_to_end(tiny_checkpoint):
    predictor = Predictor(tiny_checkpoint, backend="torch")
    image = np.random.default_rng(2).integers(0, 255, (40, 56, 3), dtype=np.uint8)
    expected = np.asarray(predictor.predict(image).mask)
    with TestClient(create_app(predictor)) as c:
        m = c.get("/model").json()
        assert m["name"] == "unet" and m["in_channels"] == 3
        assert m["min_input_size"] == 4  # the depth-2 U-Net pools twice: 2 x 2
        assert [x["name"] for x in m["classes"]] == ["sky", "road", "car"]
        r = post_file(c, png_bytes(image))
        assert r.status_code == 200
        np.testing.assert_array_equal(np.asarray(Image.open(io.BytesIO(r.content))), expected)
        body = post_file(c, png_bytes(image), params={"format": "json"}).json()
        assert sum(x["pixels"] for x in body["classes"]) == 40 * 56
        assert [x["pixels"] for x in body["classes"]] == np.bincount(
            expected.ravel(), minlength=3).tolist()


def test_uncertainty_layer_of_an_ensemble(tiny_checkpoint):
    from pixelwise.inference.uncertainty import to_uint16

    predictor = Predictor([tiny_checkpoint, tiny_checkpoint], uncertainty=True)
    image = np.random.default_rng(3).integers(0, 255, (20, 28, 3), dtype=np.uint8)
    expected = predictor.predict(image).entropy
    with TestClient(create_app(predictor)) as c:
        assert c.get("/model").json()["uncertainty"] is True
        body = post_file(c, png_bytes(image), params={"format": "json"}).json()
    layer = np.asarray(Image.open(io.BytesIO(base64.b64decode(body["uncertainty_png"]))))
    np.testing.assert_array_equal(layer, to_uint16(expected))
    assert layer.max() > 0  # an untrained model is unsure somewhere


def test_image_smaller_than_the_model_takes_is_padded(tiny_checkpoint):
    # The depth-2 U-Net pools twice: a side under 4 px used to crash inside the model (500),
    # then was refused (422); it is now mirrored out to 4 px and the mask cropped back.
    predictor = Predictor(tiny_checkpoint, backend="torch")
    with TestClient(create_app(predictor), raise_server_exceptions=False) as c:
        for h, w in [(1, 1), (3, 40), (4, 40)]:
            r = post_file(c, png_bytes(np.full((h, w, 3), 90, dtype=np.uint8)))
            assert r.status_code == 200, r.text
            assert Image.open(io.BytesIO(r.content)).size == (w, h)


def test_serve_help_ends_with_example():
    from click.testing import CliRunner

    from pixelwise.cli import cli

    result = CliRunner().invoke(cli, ["serve", "--help"])
    assert result.exit_code == 0
    assert "Example:" in result.output and "pixelwise serve --checkpoint" in result.output
    missing = CliRunner().invoke(cli, ["serve", "--checkpoint", "/nonexistent/x.pt"])
    assert missing.exit_code == 2


def test_huge_header_quotes_our_limit_not_pillows(client):
    # 20000^2 = 400 MP is past Pillow's own refusal (2 x 89,478,485): the 413 must still quote
    # --max-pixels (512 x 512 here), read from the header like any other upload.
    def chunk(kind: bytes, data: bytes) -> bytes:
        return (struct.pack(">I", len(data)) + kind + data
                + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))

    ihdr = struct.pack(">IIBBBBB", 20_000, 20_000, 8, 0, 0, 0, 0)
    header = (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", b"")
              + chunk(b"IEND", b""))
    r = post_file(client, header)
    assert r.status_code == 413
    error = r.json()["error"]
    assert "20000x20000" in error and "the limit is 262144" in error
    assert "178956970" not in error and "decompression bomb" not in error.lower()
