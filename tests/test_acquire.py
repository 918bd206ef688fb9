"""acquire against a local HTTP server on 127.0.0.1 serving archives the test builds."""

from __future__ import annotations

import hashlib
import http.server
import io
import json
import shutil
import subprocess
import tarfile
import threading
import zipfile
from pathlib import Path

import pytest

from visionflow.config import AcquireParams, DatasetSource
from visionflow.data.acquire import AcquireError, acquire_all, extract_archive

PNG_1x1 = bytes.fromhex(
    "89504e470d0a1a0a0000000d4948445200000001000000010802000000907753de0000000c4944415408d763f8cf"
    "c000000301010018dd8db00000000049454e44ae426082")
COCO = {"images": [{"id": 1, "file_name": "images/a.png", "width": 1, "height": 1}],
        "annotations": [], "categories": [{"id": 1, "name": "thing"}]}


def tar_bytes(members: dict[str, bytes], links: dict[str, str] | None = None, top: str = "shapes") -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tf:
        for name, data in members.items():
            info = tarfile.TarInfo(f"{top}/{name}" if top else name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
        for name, target in (links or {}).items():
            info = tarfile.TarInfo(name)
            info.type, info.linkname = tarfile.SYMTYPE, target
            tf.addfile(info)
    return buffer.getvalue()


GOOD = tar_bytes({"train.json": json.dumps(COCO).encode(), "images/a.png": PNG_1x1})


class Server:
    """Serves ``routes`` (path -> bytes); ``failures`` answers 503 that many times first."""

    def __init__(self):
        self.routes: dict[str, bytes] = {}
        self.failures = 0
        self.requests = 0
        owner = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                owner.requests += 1
                if owner.failures > 0:
                    owner.failures -= 1
                    self.send_error(503)
                    return
                body = owner.routes.get(self.path)
                if body is None:
                    self.send_error(404)
                    return
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_port}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()


@pytest.fixture
def server():
    s = Server()
    yield s
    s.httpd.shutdown()


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def acquire(tmp_path: Path, **datasets: DatasetSource) -> dict:
    params = AcquireParams(retries=3, timeout_s=5, datasets=datasets)
    return acquire_all(params, tmp_path / "raw", tmp_path / "downloads", tmp_path, progress=False)


def test_downloads_verifies_extracts_and_retries(tmp_path, server, monkeypatch):
    monkeypatch.setattr("time.sleep", lambda s: None)
    server.routes["/shapes.tar.gz"] = GOOD
    server.failures = 2
    manifest = acquire(tmp_path, shapes=DatasetSource(url=f"{server.url}/shapes.tar.gz", sha256=sha(GOOD)))
    assert server.requests == 3
    assert manifest["shapes"]["images"] == 1
    assert (tmp_path / "raw/shapes/train.json").is_file()  # the archive's top folder is stripped
    assert (tmp_path / "raw/shapes/images/a.png").read_bytes() == PNG_1x1
    assert json.loads((tmp_path / "raw/manifest.json").read_text()) == manifest
    # A second run uses the verified download instead of fetching again.
    acquire(tmp_path, shapes=DatasetSource(url=f"{server.url}/shapes.tar.gz", sha256=sha(GOOD)))
    assert server.requests == 3


def test_checksum_mismatch_leaves_nothing(tmp_path, server):
    server.routes["/shapes.tar.gz"] = GOOD
    with pytest.raises(AcquireError, match=r"dataset shapes \(http://.*/shapes.tar.gz\): sha256 mismatch"):
        acquire(tmp_path, shapes=DatasetSource(url=f"{server.url}/shapes.tar.gz", sha256="0" * 64))
    assert not (tmp_path / "raw/shapes").exists() and not (tmp_path / "raw/manifest.json").exists()
    assert not any((tmp_path / "downloads").iterdir())


def test_missing_file_is_not_retried(tmp_path, server):
    with pytest.raises(AcquireError, match="HTTP 404"):
        acquire(tmp_path, shapes=DatasetSource(url=f"{server.url}/nope.tar.gz", sha256="0" * 64))
    assert server.requests == 1


@pytest.mark.parametrize("archive, message", [
    (tar_bytes({"../evil.txt": b"x"}, top=""), "would land outside"),
    (tar_bytes({"/etc/evil.txt": b"x"}, top=""), "would land outside"),
    (tar_bytes({"train.json": b"{}"}, links={"shapes/link": "/etc/passwd"}), "is a link"),
])
def test_unsafe_archives_are_refused(tmp_path, archive, message):
    path = tmp_path / "x.tar.gz"
    path.write_bytes(archive)
    with pytest.raises(AcquireError, match=message):
        extract_archive(path, tmp_path / "out")
    assert not (tmp_path / "evil.txt").exists()


def test_bad_dataset_is_not_moved_into_place(tmp_path, server):
    bad = tar_bytes({"train.json": json.dumps({**COCO, "images": [
        {"id": 1, "file_name": "images/missing.png", "width": 1, "height": 1}]}).encode()})
    server.routes["/bad.tar.gz"] = bad
    with pytest.raises(AcquireError, match="file_name 'images/missing.png' not found"):
        acquire(tmp_path, bad=DatasetSource(url=f"{server.url}/bad.tar.gz", sha256=sha(bad)))
    assert [p.name for p in (tmp_path / "raw").iterdir()] == []


def test_local_folder_as_image_folder(tmp_path):
    folder = tmp_path / "photos" / "cats"
    folder.mkdir(parents=True)
    (folder / "a.png").write_bytes(PNG_1x1)
    manifest = acquire(tmp_path, photos=DatasetSource(path="photos", format="image_folder"))
    assert manifest["photos"]["images"] == 1 and (tmp_path / "raw/photos/cats/a.png").is_file()


def dataset_folder(folder: Path) -> Path:
    (folder / "images").mkdir(parents=True)
    (folder / "train.json").write_text(json.dumps(COCO))
    (folder / "images" / "a.png").write_bytes(PNG_1x1)
    return folder


@pytest.mark.skipif(not (shutil.which("tar") and shutil.which("zip")), reason="needs the tar and zip tools")
def test_archives_as_tar_and_zip_make_them(tmp_path):
    folder = dataset_folder(tmp_path / "src" / "shapes")
    # `tar -C dir .` writes a "./" member and "./images/a.png"; zip writes "images/" entries.
    subprocess.run(["tar", "czf", str(tmp_path / "dot.tgz"), "-C", str(folder), "."], check=True)
    subprocess.run(["zip", "-qr", str(tmp_path / "inside.zip"), "."], cwd=folder, check=True)
    subprocess.run(["zip", "-qr", str(tmp_path / "wrapped.zip"), "shapes"], cwd=folder.parent, check=True)
    manifest = acquire(tmp_path, dot=DatasetSource(path="dot.tgz"), inside=DatasetSource(path="inside.zip"),
                       wrapped=DatasetSource(path="wrapped.zip"))
    for name in ("dot", "inside", "wrapped"):
        assert manifest[name]["images"] == 1
        assert (tmp_path / "raw" / name / "images/a.png").read_bytes() == PNG_1x1


def zip_bytes(members: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return buffer.getvalue()


BIG = {"train.json": json.dumps(COCO).encode(), "images/a.png": PNG_1x1, "noise.bin": bytes(range(256)) * 400}


def corrupt(data: bytes) -> bytes:
    """Eight bytes overwritten in the middle of the compressed stream."""
    middle = len(data) // 2
    return data[:middle] + b"Z" * 8 + data[middle + 8:]


@pytest.mark.parametrize("name, data", [
    ("shapes.tgz", tar_bytes(BIG)[: len(tar_bytes(BIG)) // 2]),
    ("shapes.zip", zip_bytes(BIG)[: len(zip_bytes(BIG)) // 2]),
    # tarfile stops reading at the end-of-archive marker, before gzip's CRC: checked separately.
    ("shapes.tgz", corrupt(tar_bytes(BIG))),
    ("shapes.zip", corrupt(zip_bytes(BIG))),
], ids=["truncated-tgz", "truncated-zip", "corrupt-tgz", "corrupt-zip"])
def test_a_truncated_or_corrupt_archive_names_the_dataset_and_source(tmp_path, name, data):
    (tmp_path / name).write_bytes(data)
    with pytest.raises(AcquireError, match=rf"^dataset shapes \({name}\): truncated or corrupt archive"):
        acquire(tmp_path, shapes=DatasetSource(path=name))
    assert [p.name for p in (tmp_path / "raw").iterdir()] == []


def test_errors_name_the_source_not_the_staging_folder(tmp_path):
    (tmp_path / "bad.tgz").write_bytes(tar_bytes({"train.json": json.dumps(COCO).encode()}))
    with pytest.raises(AcquireError) as caught:
        acquire(tmp_path, shapes=DatasetSource(path="bad.tgz"))
    assert str(caught.value) == ("dataset shapes (bad.tgz): shapes/train.json: image id 1: "
                                 "file_name 'images/a.png' not found in the dataset")


def test_a_failed_reacquire_keeps_the_previous_copies_and_manifest(tmp_path):
    (tmp_path / "good.tgz").write_bytes(GOOD)
    first = acquire(tmp_path, shapes=DatasetSource(path="good.tgz"), more=DatasetSource(path="good.tgz"))
    before = {p: p.read_bytes() for p in sorted((tmp_path / "raw").rglob("*")) if p.is_file()}
    # "more" changes and is fine, "shapes" is now broken: neither copy nor the manifest may change.
    (tmp_path / "more.tgz").write_bytes(tar_bytes({**{"train.json": json.dumps(COCO).encode()},
                                                   "images/a.png": PNG_1x1, "images/b.png": PNG_1x1}))
    (tmp_path / "good.tgz").write_bytes(GOOD[: len(GOOD) // 2])
    with pytest.raises(AcquireError, match=r"dataset shapes \(good.tgz\)"):
        acquire(tmp_path, more=DatasetSource(path="more.tgz"), shapes=DatasetSource(path="good.tgz"))
    after = {p: p.read_bytes() for p in sorted((tmp_path / "raw").rglob("*")) if p.is_file()}
    assert after == before
    assert json.loads((tmp_path / "raw/manifest.json").read_text()) == first
    assert sorted(p.name for p in (tmp_path / "raw").iterdir()) == ["manifest.json", "more", "shapes"]
