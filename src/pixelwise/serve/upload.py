"""Read an uploaded image from a request body, streaming, under a byte limit.

The body is parsed chunk by chunk as it arrives, so an oversized upload is refused as soon as
it passes the limit (or at once, from its Content-Length) instead of after being buffered.
Two request forms are accepted:

- ``multipart/form-data`` with the image in a field named ``file`` (what a browser form and
  ``curl -F file=@x.png`` send); the first file part is used if none is named ``file``;
- the raw image bytes with an ``image/*`` or ``application/octet-stream`` Content-Type
  (``curl --data-binary @x.png -H 'Content-Type: image/png'``).
"""
from __future__ import annotations

import asyncio
from dataclasses import dataclass

from python_multipart.exceptions import FormParserError
from python_multipart.multipart import MultipartParser, MultipartState, parse_options_header
from starlette.requests import ClientDisconnect, Request

from .images import ImageRejected

# Room for the multipart boundaries and part headers on top of the file itself.
MULTIPART_OVERHEAD = 64 * 1024
FILE_FIELD = "file"


@dataclass
class Upload:
    """An uploaded file; ``content_type`` and ``filename`` are the client's hints, not trusted."""

    data: bytes
    filename: str | None
    content_type: str | None


def _media_type_ok(media_type: str) -> bool:
    """Declared types a client may send an image under (the bytes are sniffed afterwards)."""
    return not media_type or media_type.startswith("image/") or media_type == "application/octet-stream"


class _MultipartCollector:
    """Callbacks for python-multipart that keep the bytes of the one file part we want."""

    def __init__(self, boundary: bytes, max_file_bytes: int):
        self.max_file_bytes = max_file_bytes
        self.parser = MultipartParser(boundary, callbacks={
            "on_part_begin": self._part_begin, "on_part_data": self._part_data,
            "on_header_field": self._header_field, "on_header_value": self._header_value,
            "on_header_end": self._header_end, "on_headers_finished": self._headers_finished,
        })
        self.chosen: Upload | None = None
        self._chosen_name = ""
        self._buffer = bytearray()
        self._collecting = False
        self._headers: dict[str, str] = {}
        self._field = bytearray()
        self._value = bytearray()

    def _part_begin(self) -> None:
        self._headers = {}
        self._collecting = False

    def _header_field(self, data: bytes, start: int, end: int) -> None:
        self._field += data[start:end]

    def _header_value(self, data: bytes, start: int, end: int) -> None:
        self._value += data[start:end]

    def _header_end(self) -> None:
        self._headers[self._field.decode("latin-1").lower()] = self._value.decode("latin-1")
        self._field.clear()
        self._value.clear()

    def _headers_finished(self) -> None:
        _, disposition = parse_options_header(self._headers.get("content-disposition", ""))
        name = disposition.get(b"name", b"").decode("utf-8", "replace")
        filename = disposition.get(b"filename")
        is_file = name == FILE_FIELD or filename is not None
        # The part named "file" wins over an earlier unnamed file part.
        if is_file and (self.chosen is None or (name == FILE_FIELD and self._chosen_name != FILE_FIELD)):
            media_type = parse_options_header(self._headers.get("content-type", ""))[0].decode("latin-1")
            if not _media_type_ok(media_type):
                raise ImageRejected(415, f"unsupported media type {media_type!r} for the uploaded file: "
                                         "send an image (PNG, JPEG, TIFF, BMP or WebP)")
            self._buffer = bytearray()
            self._chosen_name = name
            self.chosen = Upload(data=b"", content_type=media_type or None,
                                 filename=filename.decode("utf-8", "replace") if filename else None)
            self._collecting = True
        else:
            self._collecting = False

    def _part_data(self, data: bytes, start: int, end: int) -> None:
        if not self._collecting:
            return
        if len(self._buffer) + (end - start) > self.max_file_bytes:
            raise ImageRejected(413, f"upload too large: more than {self.max_file_bytes} bytes")
        self._buffer += data[start:end]

    def feed(self, chunk: bytes) -> None:
        try:
            self.parser.write(chunk)
        except FormParserError as e:
            raise ImageRejected(400, f"malformed multipart body: {e}") from e

    def finish(self) -> Upload:
        self.parser.finalize()
        if self.parser.state != MultipartState.END:
            raise ImageRejected(400, "malformed multipart body: it ends before its closing boundary")
        if self.chosen is None:
            raise ImageRejected(400, f"no file in the form: send the image in a field named {FILE_FIELD!r}")
        self.chosen.data = bytes(self._buffer)
        return self.chosen


async def read_upload(request: Request, *, max_bytes: int, stall_timeout_s: float = 30.0) -> Upload:
    """Read the uploaded image from ``request`` (multipart form or raw body).

    Args:
        request: the incoming request; its body has not been read yet.
        max_bytes: the largest file accepted, in bytes.
        stall_timeout_s: the longest wait for the next piece of the body; a client that
            stops sending mid-upload would otherwise hold its admission slot for ever.

    Returns:
        The uploaded file's bytes and the client's hints about it.

    Raises:
        ImageRejected: 413 past the byte limit, 415 for a Content-Type that cannot carry an
            image, 400 for a malformed multipart body or a form without a file, 408 when
            the body stalls.
    """
    header = request.headers.get("content-type", "")
    media_type, params = parse_options_header(header)
    media_type = media_type.decode("latin-1")
    if media_type == "multipart/form-data":
        boundary = params.get(b"boundary")
        if not boundary:
            raise ImageRejected(400, "multipart/form-data request without a boundary")
        collector: _MultipartCollector | None = _MultipartCollector(boundary, max_bytes)
        limit = max_bytes + MULTIPART_OVERHEAD
    elif media_type and _media_type_ok(media_type):
        collector = None
        limit = max_bytes
    else:
        shown = media_type or "none"
        raise ImageRejected(415, f"unsupported Content-Type {shown!r}: send multipart/form-data with "
                                 f"a {FILE_FIELD!r} field, or the image bytes with an image/* type")

    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise ImageRejected(413, f"upload too large: {declared} bytes, the limit is {max_bytes}")

    raw = await _receive(request, collector, limit, max_bytes, stall_timeout_s)
    if collector is None:
        return Upload(data=bytes(raw), filename=None, content_type=media_type)
    return collector.finish()


async def _receive(request: Request, collector: "_MultipartCollector | None", limit: int,
                   max_bytes: int, stall_timeout_s: float) -> bytearray:
    """The body, chunk by chunk: fed to ``collector`` (multipart), else returned raw."""
    received = 0
    raw = bytearray()
    chunks = request.stream().__aiter__()
    try:
        while True:
            try:
                chunk = await asyncio.wait_for(chunks.__anext__(), stall_timeout_s)
            except StopAsyncIteration:
                break
            except asyncio.TimeoutError:
                raise ImageRejected(408, f"upload stalled: no data for {stall_timeout_s:g} s") from None
            received += len(chunk)
            if received > limit:
                raise ImageRejected(413, f"upload too large: more than {max_bytes} bytes")
            if collector is None:
                raw += chunk
            else:
                collector.feed(chunk)
    except ClientDisconnect:
        # Nobody is left to answer; a plain 400 keeps this out of the server-error log.
        raise ImageRejected(400, "the client disconnected during the upload") from None
    return raw
