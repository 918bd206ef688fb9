"""Fetch real datasets declared in params into ``data/raw/<name>/``.

A source is a URL (http, https or file; sha256 required) or a local path (a
folder or an archive). Downloads are retried, checked against their sha256 and
kept in ``.cache/downloads`` so a rerun does not fetch again. Archives (tar,
tar.gz/bz2/xz, zip) are extracted only if every member stays inside the target
and none is a link or device. Each dataset is assembled in a hidden staging
folder; only when every dataset has been fetched and checked are they swapped
into place, and the manifest is written last: a failed run leaves the previous
good copies and their manifest as they were, an interrupted one no half-written
dataset. Every error names the dataset and its source (URL or path), never the
staging folder.
"""

from __future__ import annotations

import bz2
import gzip
import hashlib
import json
import lzma
import shutil
import tarfile
import time
import urllib.error
import urllib.parse
import urllib.request
import zipfile
import zlib
from pathlib import Path, PurePosixPath

from tqdm import tqdm

from visionflow.config import AcquireParams, DatasetSource
from visionflow.data.coco import CocoFormatError, load_coco
from visionflow.data.images import ImageReadError, list_images
from visionflow.data.stereo import STEREO_FORMATS, check_stereo_dataset, list_splits

ARCHIVE_SUFFIXES = (".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tbz2", ".tar.xz", ".txz", ".zip")
CHUNK = 1 << 20
# What a truncated or corrupt archive raises while it is read.
CORRUPT_ARCHIVE_ERRORS = (tarfile.TarError, zipfile.BadZipFile, EOFError, zlib.error, lzma.LZMAError,
                          gzip.BadGzipFile)


class AcquireError(RuntimeError):
    """A dataset that could not be fetched, verified or unpacked; names the dataset and source."""


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(CHUNK), b""):
            digest.update(block)
    return digest.hexdigest()


def download(url: str, sha256: str, cache_dir: Path, retries: int, timeout_s: float,
             progress: bool = True) -> Path:
    """The verified file for ``url`` in ``cache_dir`` (fetched unless already there)."""
    cache_dir.mkdir(parents=True, exist_ok=True)
    name = PurePosixPath(urllib.parse.urlparse(url).path).name or "download"
    target = cache_dir / f"{sha256.lower()}-{name}"
    if target.is_file() and sha256_of(target) == sha256.lower():
        return target
    partial = target.with_name(target.name + ".partial")
    last_error: Exception | None = None
    for attempt in range(retries + 1):
        if attempt:
            time.sleep(min(2.0**attempt * 0.25, 10.0))
        try:
            with urllib.request.urlopen(url, timeout=timeout_s) as response, open(partial, "wb") as out:
                total = int(response.headers.get("Content-Length") or 0) or None
                with tqdm(total=total, unit="B", unit_scale=True, desc=f"download {name}",
                          disable=not progress) as bar:
                    for block in iter(lambda: response.read(CHUNK), b""):
                        out.write(block)
                        bar.update(len(block))
            break
        except urllib.error.HTTPError as exc:
            last_error = exc
            if exc.code < 500:  # 4xx will not get better by asking again
                partial.unlink(missing_ok=True)
                raise AcquireError(f"{url}: HTTP {exc.code} {exc.reason}") from None
        except (urllib.error.URLError, OSError, TimeoutError) as exc:
            last_error = exc
    else:
        partial.unlink(missing_ok=True)
        raise AcquireError(f"{url}: failed after {retries + 1} attempts: {last_error}")
    actual = sha256_of(partial)
    if actual != sha256.lower():
        partial.unlink(missing_ok=True)
        raise AcquireError(f"{url}: sha256 mismatch: expected {sha256.lower()}, got {actual}")
    partial.replace(target)
    return target


def is_archive(path: Path) -> bool:
    return path.name.lower().endswith(ARCHIVE_SUFFIXES)


def _check_member(name: str, archive: Path) -> PurePosixPath:
    """The member's path; ``./`` and ``./sub/file`` (what ``tar -C dir .`` writes) are fine."""
    member = PurePosixPath(name)
    parts = member.parts
    if (member.is_absolute() or ".." in parts or name.startswith(("/", "\\"))
            or (parts and ":" in parts[0])):
        raise AcquireError(f"{archive}: member {name!r} would land outside the target folder")
    return member


def extract_archive(archive: Path, target: Path) -> None:
    """Extract into ``target``; refuse links, devices and members that escape it.

    A truncated or corrupt archive raises :class:`AcquireError` naming ``archive``.
    """
    try:
        _extract(archive, target)
    except AcquireError:
        raise
    except CORRUPT_ARCHIVE_ERRORS as exc:
        raise AcquireError(f"{archive}: truncated or corrupt archive ({type(exc).__name__}: {exc})") from None


COMPRESSED_TAR_OPENERS = {b"\x1f\x8b": gzip.open, b"BZh": bz2.open, b"\xfd7zXZ\x00": lzma.open}


def _check_compressed_stream(archive: Path) -> None:
    """Decompress a .tar.gz/.bz2/.xz to its end: tarfile stops at the end-of-archive marker and
    never reaches the stream's checksum, so a corrupt byte would otherwise go unnoticed."""
    with open(archive, "rb") as f:
        head = f.read(6)
    for magic, opener in COMPRESSED_TAR_OPENERS.items():
        if head.startswith(magic):
            try:
                with opener(archive, "rb") as stream:
                    while stream.read(CHUNK):
                        pass
            except (OSError, EOFError, lzma.LZMAError, zlib.error) as exc:  # bz2 reports corruption as OSError
                raise AcquireError(f"{archive}: truncated or corrupt archive ({type(exc).__name__}: {exc})") from None


def _extract(archive: Path, target: Path) -> None:
    target.mkdir(parents=True, exist_ok=True)
    if archive.name.lower().endswith(".zip"):
        with zipfile.ZipFile(archive) as zf:
            for info in zf.infolist():
                _check_member(info.filename, archive)
                mode = info.external_attr >> 16
                if (mode & 0o170000) == 0o120000:
                    raise AcquireError(f"{archive}: member {info.filename!r} is a symbolic link")
            zf.extractall(target)
        return
    _check_compressed_stream(archive)
    with tarfile.open(archive) as tf:
        members = tf.getmembers()
        for member in members:
            _check_member(member.name, archive)
            if member.issym() or member.islnk():
                raise AcquireError(f"{archive}: member {member.name!r} is a link")
            if not (member.isfile() or member.isdir()):
                raise AcquireError(f"{archive}: member {member.name!r} is not a regular file")
        tf.extractall(target, members=members, filter="data")


def _dataset_root(folder: Path, source: DatasetSource) -> Path:
    """Archives often wrap a COCO dataset in one folder: then that folder is the root.

    Image folders keep their layout (a single subfolder may be a class). Stereo datasets
    are unwrapped until a folder holds split folders of their layout.
    """
    if source.format in STEREO_FORMATS:
        while not list_splits(folder):
            entries = [p for p in folder.iterdir() if not p.name.startswith(".")]
            if not (len(entries) == 1 and entries[0].is_dir()):
                break
            folder = entries[0]
        return folder
    if source.format != "coco" or any(folder.glob("*.json")):
        return folder
    entries = [p for p in folder.iterdir() if not p.name.startswith(".")]
    return entries[0] if len(entries) == 1 and entries[0].is_dir() else folder


def check_format(root: Path, source: DatasetSource, name: str) -> dict[str, int]:
    """Validate an unpacked dataset; returns counts for the manifest."""
    if source.format == "image_folder":
        images = list_images(root)
        if not images:
            raise AcquireError(f"dataset {name}: no images found under {root}")
        return {"images": len(images)}
    if source.format in STEREO_FORMATS:
        try:
            return check_stereo_dataset(root, source.format)
        except (OSError, ValueError) as exc:
            raise AcquireError(f"dataset {name}: {exc}") from None
    coco_files = sorted(root.glob("*.json"))
    if not coco_files:
        raise AcquireError(f"dataset {name}: a COCO dataset needs <split>.json files at its top level")
    counts = {"images": 0, "annotations": 0}
    for coco_file in coco_files:
        coco = load_coco(coco_file, root=root)
        for image in coco.images:
            if not coco.image_path(image).is_file():
                raise AcquireError(f"{coco_file}: image id {image['id']}: file_name "
                                   f"{image['file_name']!r} not found in the dataset")
        counts["images"] += len(coco.images)
        counts["annotations"] += len(coco.annotations)
    return counts


def _swap_in(staged: Path, target: Path) -> None:
    """Put ``staged`` at ``target``; the previous copy is removed only once the new one is in place."""
    previous = target.with_name(f".{target.name}.previous.partial")
    shutil.rmtree(previous, ignore_errors=True)
    if target.exists():
        target.rename(previous)
    staged.rename(target)
    shutil.rmtree(previous, ignore_errors=True)


def _relative_to_source(message: str, name: str, origin: str, content: Path, fetched: Path | None) -> str:
    """``message`` without the prefixes the caller adds and with staged paths made relative
    to the dataset's top (the paths a user sees inside their archive or folder)."""
    for prefix in (f"dataset {name}: ", f"{origin}: ", f"{fetched}: "):
        message = message.removeprefix(prefix)
    return message.replace(f"{content}/", "").replace(str(content), ".")


def stage_dataset(name: str, source: DatasetSource, staging: Path, cache_dir: Path, params: AcquireParams,
                  project_root: Path, progress: bool = True) -> tuple[Path, dict]:
    """Fetch, unpack and check one dataset below ``staging``; returns its root there and its
    manifest entry. Errors name the dataset and its source, not the staging folder."""
    origin = source.url or source.path
    fetched: Path | None = None
    shutil.rmtree(staging, ignore_errors=True)
    try:
        if source.url is not None:
            retries = 0 if source.url.startswith("file://") else params.retries
            fetched = download(source.url, source.sha256, cache_dir, retries, params.timeout_s, progress)
        else:
            fetched = (project_root / source.path).resolve()
            if not fetched.exists():
                raise AcquireError(f"path {source.path} does not exist")
            if source.sha256 is not None:
                if not fetched.is_file():
                    raise AcquireError(f"sha256 applies to a file, {source.path} is a folder")
                if sha256_of(fetched) != source.sha256.lower():
                    raise AcquireError(f"sha256 mismatch for {source.path}")
        if fetched.is_dir():
            links = [p for p in fetched.rglob("*") if p.is_symlink()]
            if links:
                raise AcquireError(f"{links[0].relative_to(fetched)} is a symbolic link")
            shutil.copytree(fetched, staging / "content")
        elif is_archive(fetched):
            extract_archive(fetched, staging / "content")
        else:
            raise AcquireError(f"{fetched.name} is neither a folder nor an archive "
                               f"({', '.join(ARCHIVE_SUFFIXES)})")
        content = _dataset_root(staging / "content", source)
        counts = check_format(content, source, name)
    except (AcquireError, CocoFormatError, ImageReadError) as exc:  # acquire_all removes the staging folder
        message = _relative_to_source(str(exc), name, origin, staging / "content", fetched)
        raise AcquireError(f"dataset {name} ({origin}): {message}") from None
    return content, {"format": source.format, "source": origin, "sha256": source.sha256, **counts}


def acquire_all(params: AcquireParams, raw_dir: Path, cache_dir: Path, project_root: Path,
                progress: bool = True) -> dict[str, dict]:
    """Fetch every declared dataset, then write ``manifest.json`` (the last file written).

    All datasets are staged and checked first; if any fails, the previous ``data/raw``
    copies and manifest stay untouched.
    """
    raw_dir.mkdir(parents=True, exist_ok=True)
    manifest_path = raw_dir / "manifest.json"
    manifest: dict[str, dict] = {}
    staged: dict[str, Path] = {}
    stagings = [raw_dir / f".{name}.partial" for name in params.datasets]
    try:
        for (name, source), staging in zip(params.datasets.items(), stagings):
            staged[name], manifest[name] = stage_dataset(name, source, staging, cache_dir, params,
                                                         project_root, progress)
        # From here on the folders change: no manifest until they are all in place.
        manifest_path.unlink(missing_ok=True)
        for name, root in staged.items():
            _swap_in(root, raw_dir / name)
    finally:
        for staging in stagings:
            shutil.rmtree(staging, ignore_errors=True)
    tmp = manifest_path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    tmp.replace(manifest_path)
    return manifest
