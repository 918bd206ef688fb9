"""``visionflow serve``: one task family's model behind HTTP (stdlib only, one model per process).

``POST /invocations`` takes PNG/JPEG bytes (``Content-Type: image/png`` or ``image/jpeg``) or
JSON naming base64 images by the family's ``request_images`` (``{"image": ...}``; a family
with two inputs, ``{"left": ..., "right": ...}``) and answers the family's ``answer`` as
JSON. ``GET /health`` and ``GET /ping`` (as MLflow's scoring server has it) say the server is
up. A bad request is a 400 with one JSON line, ``{"error": "..."}``, naming what is wrong.
See docs/serving.md.
"""

from __future__ import annotations

import base64
import binascii
import json
import sys
import threading
import traceback
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import numpy as np

MAX_BODY_BYTES = 64 * 1024 * 1024  # a request larger than this is refused (413) before it is read
IMAGE_TYPES = ("image/png", "image/jpeg", "image/jpg")


class RequestError(ValueError):
    """A request the endpoint cannot take; its message is the 400's ``error``."""


def decode_image(data: bytes, what: str) -> np.ndarray:
    """PNG/JPEG bytes -> uint8 (H, W, 3) RGB, decoded as ``read_rgb`` decodes files (grey, RGBA converted)."""
    import cv2

    image = cv2.imdecode(np.frombuffer(data, dtype=np.uint8), cv2.IMREAD_COLOR_RGB) if data else None
    if image is None:
        raise RequestError(f"{what}: not an image (expected PNG or JPEG bytes, got {len(data)} bytes that do "
                           f"not decode)")
    return image


def request_images(body: bytes, content_type: str, names: tuple[str, ...]) -> dict[str, np.ndarray]:
    """The images of one request, by name (``names``: the family's ``request_images``)."""
    kind = content_type.split(";")[0].strip().lower()
    if kind in IMAGE_TYPES:
        if len(names) != 1:
            raise RequestError(f"this model takes {len(names)} images ({', '.join(names)}): send JSON "
                               + json.dumps({name: "<base64>" for name in names}))
        return {names[0]: decode_image(body, "body")}
    if kind != "application/json":
        raise RequestError(f"Content-Type {content_type or '(none)'!r}: send image/png, image/jpeg or "
                           f"application/json")
    try:
        document = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise RequestError(f"body: not JSON ({exc})") from None
    if not isinstance(document, dict):
        raise RequestError(f"body: expected a JSON object with {', '.join(repr(n) for n in names)}, "
                           f"got {type(document).__name__}")
    images = {}
    for name in names:
        if name not in document:
            raise RequestError(f"missing {name!r}: this model takes "
                               + json.dumps({n: "<base64 PNG/JPEG>" for n in names}))
        if not isinstance(document[name], str):
            raise RequestError(f"{name!r}: expected a base64 string, got {type(document[name]).__name__}")
        try:
            data = base64.b64decode(document[name], validate=True)
        except (binascii.Error, ValueError):
            raise RequestError(f"{name!r}: not base64") from None
        images[name] = decode_image(data, repr(name))
    return images


def make_server(family: Any, model: Any, device: Any, host: str = "127.0.0.1", port: int = 8080,
                options: dict[str, Any] | None = None, model_ref: str = "") -> ThreadingHTTPServer:
    """A bound server (port 0: any free port, see ``server_address``); call ``serve_forever()``.

    ``model``: the family's exported model (``inference_module`` or its MLflow copy), moved to
    ``device``; ``options``: passed to ``family.answer`` (e.g. a ``detector``). Requests are
    answered one at a time (one model, one lock).
    """
    from visionflow.data.images import ImageReadError

    model = model.to(device)  # in eval mode already (``inference_module``); torch.export's copy refuses .eval()
    options = dict(options or {})
    lock = threading.Lock()

    class Handler(BaseHTTPRequestHandler):
        server_version = "visionflow"

        def _send(self, status: int, document: dict) -> None:
            body = (json.dumps(document, separators=(",", ":")) + "\n").encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
            if self.path.split("?")[0] in ("/health", "/ping"):
                self._send(HTTPStatus.OK, {"status": "ok", "task": family.name, "model": model_ref,
                                           "inputs": list(family.request_images)})
            else:
                self._send(HTTPStatus.NOT_FOUND, {"error": f"{self.path}: no such endpoint (POST /invocations, "
                                                           f"GET /health, GET /ping)"})

        def do_POST(self) -> None:  # noqa: N802
            if self.path.split("?")[0] != "/invocations":
                self._send(HTTPStatus.NOT_FOUND, {"error": f"{self.path}: no such endpoint (POST /invocations)"})
                return
            try:
                length = int(self.headers.get("Content-Length") or 0)
            except ValueError:
                length = -1
            if length <= 0:
                self._send(HTTPStatus.BAD_REQUEST, {"error": "empty body (or no Content-Length): send an image"})
                return
            if length > MAX_BODY_BYTES:
                self.close_connection = True
                self._send(HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
                           {"error": f"body of {length} bytes: the limit is {MAX_BODY_BYTES}"})
                return
            body = self.rfile.read(length)
            try:
                images = request_images(body, self.headers.get("Content-Type", ""), family.request_images)
                with lock:
                    answer = family.answer(model, images, device, **options)
            except (RequestError, ImageReadError) as exc:
                self._send(HTTPStatus.BAD_REQUEST, {"error": str(exc).splitlines()[0]})
                return
            except Exception as exc:  # the server stays up; the traceback goes to its log, not the client
                traceback.print_exc(file=sys.stderr)
                self._send(HTTPStatus.INTERNAL_SERVER_ERROR,
                           {"error": f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"})
                return
            self._send(HTTPStatus.OK, {"task": family.name, **answer})

        def log_message(self, format: str, *args: Any) -> None:
            sys.stderr.write(f"visionflow serve: {self.address_string()} {format % args}\n")

    return ThreadingHTTPServer((host, port), Handler)


def serve(family: Any, model: Any, device: Any, host: str, port: int, options: dict[str, Any] | None = None,
          model_ref: str = "") -> None:
    """Serve until interrupted (Ctrl-C)."""
    server = make_server(family, model, device, host, port, options, model_ref)
    address, bound = server.server_address[:2]
    print(f"visionflow serve: {family.name} ({model_ref}) on http://{address}:{bound}/invocations",
          file=sys.stderr, flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
