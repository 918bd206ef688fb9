"""acquire against a local HTTP server on 127.0.0.1 serving archives the test builds."""

from __future__ import annotations

import hashlib
import http.server
import io
import json
import tarfile
import threading
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
    with pytest.raises(AcquireError, match="shapes.tar.gz: sha256 mismatch"):
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
