"""Request parsing for the service: limits, content types, image decoding and array validation.

Each input model overrides ``from_http_request`` so that the service reads the
request itself: the body size is capped while it streams in, uploaded files are
decoded by :func:`fashion.imaging.decode_image` (format allow-list, pixel cap),
a string where a file belongs is refused rather than fetched as a URL, and
every client mistake becomes a 4xx with a JSON message before any model runs.
"""

from __future__ import annotations

import io
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from http import HTTPStatus
from pathlib import Path
from typing import Annotated, Any

import anyio
import bentoml
import numpy as np
from bentoml.exceptions import BentoMLException
from bentoml.validators import DType, Shape
from pydantic import Field, PlainSerializer, SerializationInfo
from starlette.requests import ClientDisconnect, Request

from fashion.arrays import read_npy, sniff
from fashion.backends import BACKENDS
from fashion.contract import EMPTY, IMAGE_SIZE, NOT_ARRAYS, NUM_CLASSES, TOO_MANY, ContractError, check_pixels
from fashion.imaging import FRAMINGS, ImageError, decode_image
from service.asgi_types import Receive
from service.config import ServiceConfig
from service.registry import ModelRegistry
from service.serving import Serving, serving_of

IMAGE_CONTENT_TYPES = ("image/", "application/octet-stream")
NPY_CONTENT_TYPES = ("application/x-npy", "application/octet-stream")
INLINE_DECODE_BYTES = 64 * 1024
# Form fields (or query parameters) an image upload may carry besides its files.
UPLOAD_OPTIONS = ("backend", "top_k", "return_input", "framing")
MAX_FORM_FIELDS = 16  # plain (non-file) fields in one upload form; more is a malformed request


class RequestError(BentoMLException):
    """A client mistake, answered with ``status`` and a JSON ``{"error": message}`` body."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message, error_code=HTTPStatus(status))


# How the native routes answer a broken contract (fashion.contract.ContractError.reason); anything else is 422.
CONTRACT_STATUS = {EMPTY: 400, TOO_MANY: 413, NOT_ARRAYS: 415}


def contract_refusal(exc: ContractError) -> RequestError:
    """A broken input contract as the native routes answer it."""
    return RequestError(exc.message, CONTRACT_STATUS.get(exc.reason, 422))


def serving(request: Request) -> Serving:
    """What the service hands to request parsing (put on the request by service.admission); 503 before it exists."""
    found = serving_of(request.scope)
    if found is None:
        raise RequestError("the service is starting", 503)
    return found


def form_value(value: str | None) -> str | None:
    """A form field as the client meant it: BentoML's own client JSON-encodes every non-file field
    (``backend="onnx-tf"`` arrives as ``"onnx-tf"`` in quotes, ``None`` as ``null``), while curl, this
    project's client and the web page send the raw text. A JSON string or ``null`` is decoded; any other
    text (``onnx-tf``, ``3``, ``true``) is already what it means and passes unchanged."""
    if value is None or value == "null":
        return None
    if len(value) >= 2 and value[0] == value[-1] == '"':
        try:
            decoded = json.loads(value)
        except ValueError:
            return value
        return decoded if isinstance(decoded, str) else value
    return value


def parse_backend(value: Any, config: ServiceConfig) -> str:
    """A known backend name, or the configured default when none is given."""
    if value in (None, ""):
        return config.default_backend
    if not isinstance(value, str) or value not in BACKENDS:
        raise RequestError(f"unknown backend {str(value)[:64]!r}; choose from {sorted(config.backends)}", 400)
    return value


def parse_top_k(value: Any) -> int | None:
    """How many classes each answer lists, 1 to 10 (``None``: the configured default)."""
    if value in (None, ""):
        return None
    text = str(value)
    if not text.isdigit() or not 1 <= int(text) <= NUM_CLASSES:
        raise RequestError(f"top_k must be a whole number from 1 to {NUM_CLASSES}; got {text[:16]!r}", 400)
    return int(text)


def parse_flag(name: str, value: Any) -> bool:
    """A yes/no option: ``1``/``true`` or ``0``/``false`` (absent: no)."""
    text = str(value).lower() if value is not None else ""
    if text not in ("", "0", "1", "false", "true"):
        raise RequestError(f"{name} must be 0, 1, false or true; got {text[:16]!r}", 400)
    return text in ("1", "true")


def parse_framing(value: Any, config: ServiceConfig) -> str:
    """``dataset`` or ``legacy`` (see fashion.imaging); absent: the configured framing (default ``dataset``)."""
    if value in (None, ""):
        return config.framing
    if value not in FRAMINGS:
        raise RequestError(f"framing must be one of {list(FRAMINGS)}; got {str(value)[:16]!r}", 400)
    return value


def check_loaded(backend: str, registry: ModelRegistry, version: str | None = None) -> str:
    """Refuse, while parsing, a backend this server has not loaded (the one place, for every endpoint), or a
    ``?version=`` it has not loaded (404); return the key of the version that will answer (service.registry.pin).

    The key pins the request: a version promoted while it is in flight does not change what answers it.
    A server that is not ready never gets here: admission answers 503 first (service.admission).
    """
    if not registry.ready:
        return backend
    try:
        registry.get(backend)
    except KeyError as exc:
        raise RequestError(str(exc.args[0]), 400) from None
    try:
        return registry.pin(backend, version or None)
    except KeyError as exc:
        raise RequestError(str(exc.args[0]), 404) from None


def _content_type(request: Request) -> str:
    return request.headers.get("content-type", "").split(";")[0].strip().lower()


async def read_body(request: Request, limit: int, allow_empty: bool = False) -> bytes:
    """The whole body, refusing (413) as soon as it grows past ``limit`` bytes (and an empty one, unless allowed)."""
    return await gather_body(request.stream(), request.headers.get("content-length"), limit, allow_empty)


async def receive_body(receive: Receive, declared: str | None, limit: int,
                       allow_empty: bool = False) -> bytes:
    """:func:`read_body` for a plain ASGI app: the body from ``receive``, ``declared`` its Content-Length.

    Raises:
        starlette.requests.ClientDisconnect: the client went away before the body was whole.
    """
    return await gather_body(asgi_chunks(receive), declared, limit, allow_empty)


async def asgi_chunks(receive: Receive) -> AsyncIterator[bytes]:
    """The body's chunks as ASGI delivers them, as Starlette's ``Request.stream`` yields them."""
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientDisconnect()
        yield message.get("body", b"")
        if not message.get("more_body", False):
            return


async def gather_body(chunks: AsyncIterator[bytes], declared: str | None, limit: int, allow_empty: bool) -> bytes:
    """The body of ``chunks`` within ``limit`` bytes (413 past it, as soon as ``declared`` or the bytes say so)."""
    if declared and declared.isdigit() and int(declared) > limit:
        raise RequestError(f"request body of {int(declared):,} bytes is over the limit of {limit:,}", 413)
    pieces, size = [], 0
    async for chunk in chunks:
        size += len(chunk)
        if size > limit:
            raise RequestError(f"request body is over the limit of {limit:,} bytes", 413)
        pieces.append(chunk)
    body = b"".join(pieces)
    if not body and not allow_empty:
        raise RequestError("empty request body", 400)
    return body


@dataclass(frozen=True)
class FormPart:
    """One part of a multipart/form-data body: its field name, its file name (``None`` for a plain field) and its
    bytes."""

    name: str
    filename: str | None
    data: bytes


def split_form(body: bytes, content_type: str, max_files: int | None = None,
               max_fields: int | None = None) -> list[FormPart]:
    """Every part of a multipart/form-data ``body``, in order, by python-multipart's parser over the body as read.

    Each part's bytes are one slice of the body (a part the parser sees in one piece is never copied again): no
    spooled temporary files, no upload objects. Refuses (413) more than ``max_files`` parts with a file name and
    (400) more than ``max_fields`` without one as soon as the part that crosses the limit starts, and (400) a
    malformed body or one that ends before its closing boundary.
    """
    from python_multipart.exceptions import FormParserError
    from python_multipart.multipart import MultipartParser, parse_options_header

    boundary = parse_options_header(content_type)[1].get(b"boundary")
    if not boundary:
        raise RequestError("multipart/form-data body without a boundary", 400)
    parts: list[tuple[list[bytes], list[bytes]]] = []  # (content-disposition, data pieces)
    header = {"field": b"", "value": b""}
    counts = {"files": 0, "fields": 0}
    ended: list[bool] = []

    def on_header_end() -> None:
        if header["field"].strip().lower() == b"content-disposition":
            parts[-1][0].append(header["value"])
        header["field"] = header["value"] = b""

    def on_headers_finished() -> None:
        options = parse_options_header(parts[-1][0][0] if parts[-1][0] else b"")[1]
        kind, limit = ("files", max_files) if b"filename" in options else ("fields", max_fields)
        counts[kind] += 1
        if limit is not None and counts[kind] > limit:
            raise RequestError(f"more than {limit} {'images' if kind == 'files' else 'form fields'} in one request",
                               413 if kind == "files" else 400)

    def on_header_field(data: bytes, start: int, end: int) -> None:
        header["field"] += data[start:end]

    def on_header_value(data: bytes, start: int, end: int) -> None:
        header["value"] += data[start:end]

    callbacks = {"on_part_begin": lambda: parts.append(([], [])),
                 "on_header_field": on_header_field, "on_header_value": on_header_value,
                 "on_header_end": on_header_end, "on_headers_finished": on_headers_finished,
                 "on_part_data": lambda data, start, end: parts[-1][1].append(data[start:end]),
                 "on_end": lambda: ended.append(True)}
    try:
        parser = MultipartParser(boundary, callbacks)
        parser.write(body)
        parser.finalize()
    except (FormParserError, ValueError) as exc:
        raise RequestError(f"malformed multipart/form-data body: {exc}", 400) from None
    if not ended:
        raise RequestError("malformed multipart/form-data body: it ends before the closing boundary", 400)
    return [_form_part(disposition, pieces) for disposition, pieces in parts]


def _form_part(disposition: list[bytes], pieces: list[bytes]) -> FormPart:
    """A part from its Content-Disposition header (if any) and its data pieces (joined: one piece stays as it is)."""
    from python_multipart.multipart import parse_options_header

    options = parse_options_header(disposition[0])[1] if disposition else {}
    filename = options.get(b"filename")
    return FormPart(options.get(b"name", b"").decode("utf-8", "replace"),
                    None if filename is None else filename.decode("utf-8", "replace"), b"".join(pieces))


async def read_image_files(request: Request, config: ServiceConfig) -> tuple[list[bytes], dict[str, str]]:
    """Image files from a multipart ``images`` field, or one raw image body; plus other form fields."""
    content_type = _content_type(request)
    body = await read_body(request, config.max_body_bytes)
    if content_type.startswith(IMAGE_CONTENT_TYPES):
        return [body], {}
    if content_type != "multipart/form-data":
        raise RequestError(
            f"unsupported Content-Type {content_type or '(none)'!r}: send multipart/form-data with files in "
            "the 'images' field, or one raw image body (image/png, image/jpeg, ...)", 415)
    parts = split_form(body, request.headers.get("content-type", ""), config.max_images, MAX_FORM_FIELDS)
    unknown = sorted({p.name for p in parts} - {"images", *UPLOAD_OPTIONS})
    if unknown:
        raise RequestError(f"unknown form field(s) {unknown}; expected 'images' (files) and optional "
                           f"{', '.join(repr(o) for o in UPLOAD_OPTIONS)}")
    images = [p for p in parts if p.name == "images"]
    if not images:
        raise RequestError("no files in the 'images' field", 400)
    if any(p.filename is None for p in images):
        raise RequestError("'images' must be uploaded files; the service does not fetch URLs or read paths", 400)
    fields = {p.name: p.data.decode("utf-8", "replace") for p in parts if p.name != "images" and p.filename is None}
    return [p.data for p in images], fields


def decode_all(files: list[bytes], framing: str = "dataset") -> np.ndarray:
    """Decode every file with one framing policy; the first refusal names the image's position."""
    pixels = np.empty((len(files), IMAGE_SIZE, IMAGE_SIZE), dtype=np.uint8)
    for i, data in enumerate(files):
        try:
            pixels[i] = decode_image(data, framing=framing)
        except ImageError as exc:
            where = f"image {i}: " if len(files) > 1 else ""
            raise RequestError(f"{where}{exc}", exc.status) from None
    return pixels


def validate_pixels(array: Any, max_images: int) -> np.ndarray:
    """``uint8[N, 28, 28]`` from a client array (nested lists or .npy), or a 4xx saying why not (fashion.contract)."""
    try:
        return check_pixels(array, max_images)
    except ContractError as exc:
        raise contract_refusal(exc) from None


def load_npy(body: bytes) -> np.ndarray:
    """The array of a ``.npy`` body (fashion.arrays: no pickles), checked as pixels by the caller."""
    if sniff(body) != "npy":
        raise RequestError(f"not a .npy file: it starts with {body[:8].hex()}", 400)
    try:
        return read_npy(io.BytesIO(body), ".npy body", lambda shape, dtype: None)
    except ContractError as exc:
        raise contract_refusal(exc) from None


async def decode_files(files: list[bytes], framing: str = "dataset") -> np.ndarray:
    """Decode on the event loop when the files are small (a thread hop costs more than a 28 x 28 PNG),
    in a worker thread otherwise so that a large image never stalls other requests."""
    if sum(len(f) for f in files) <= INLINE_DECODE_BYTES:
        return decode_all(files, framing)
    return await anyio.to_thread.run_sync(decode_all, files, framing)


class ImageUpload(bentoml.IODescriptor):
    """Image file(s) in the multipart field ``images`` (or one raw image body); answers in input order."""

    images: list[Path] = Field(description="image files (PNG, JPEG, GIF, BMP, WebP, TIFF), at most "
                                           "FASHION_MAX_IMAGES (default 1024)")
    backend: str | None = Field(None, description=f"one of {sorted(BACKENDS)} (form field or ?backend=); "
                                                  "default: the fastest")
    top_k: int | None = Field(None, ge=1, le=NUM_CLASSES, description="classes listed per answer, 1-10 (form "
                              "field or ?top_k=); default FASHION_TOP_K (3); 10 gives every probability")
    return_input: bool = Field(False, description="add 'pixels' to each answer: the 28 x 28 uint8 image the "
                                                  "model received (form field or ?return_input=1)")
    framing: str | None = Field(None, description="'dataset' (trim margins, Fashion-MNIST's own conversion) or "
                                "'legacy' (scale the whole canvas); form field or ?framing=; default "
                                "FASHION_FRAMING (dataset); see docs/inputs.md")

    @classmethod
    async def from_http_request(cls, request: Request, serde: Any) -> ImageUpload:
        found = serving(request)
        files, fields = await read_image_files(request, found.config)
        option = {name: request.query_params.get(name) or form_value(fields.get(name)) for name in UPLOAD_OPTIONS}
        backend = check_loaded(parse_backend(option["backend"], found.config), found.registry,
                               request.query_params.get("version"))
        top_k, return_input = parse_top_k(option["top_k"]), parse_flag("return_input", option["return_input"])
        framing = parse_framing(option["framing"], found.config)
        return cls.model_construct(images=await decode_files(files, framing), backend=backend, top_k=top_k,
                                   return_input=return_input, framing=framing)


class NoInput(bentoml.IODescriptor):
    """No input: the body, whatever its Content-Type, is never parsed (BentoML's default parser answers 500
    to a malformed multipart body)."""

    @classmethod
    async def from_http_request(cls, request: Request, serde: Any) -> NoInput:
        return cls.model_construct()


# How BentoML declares an array input (its iris example: ``Annotated[np.ndarray, Shape((-1, 4)), DType(...)]``):
# the schema says "tensor", so BentoML's client sends a numpy array as nested lists instead of failing to
# JSON-encode it. The service still reads the body itself (``from_http_request``), so the annotation only
# describes the input; .npy bodies and 2-D single images keep working.
PixelTensor = Annotated[np.ndarray, Shape((-1, IMAGE_SIZE, IMAGE_SIZE)), DType("uint8")]


class PixelArray(bentoml.IODescriptor):
    """``N x 28 x 28`` uint8 pixels: JSON ``{"pixels": [...], "backend": ...}`` or a raw ``.npy`` body."""

    pixels: PixelTensor = Field(description="N x 28 x 28 whole numbers 0-255 (a uint8 numpy array with "
                                            "BentoML's client)")
    backend: str | None = Field(None, description=f"one of {sorted(BACKENDS)}; default: the fastest")

    @classmethod
    async def from_http_request(cls, request: Request, serde: Any) -> PixelArray:
        found = serving(request)
        body = await read_body(request, found.config.max_body_bytes)
        pixels, backend = parse_pixel_body(body, _content_type(request), request.query_params.get("backend"),
                                           found.config.max_images)
        return cls.model_construct(pixels=pixels, backend=check_loaded(parse_backend(backend, found.config),
                                                                       found.registry,
                                                                       request.query_params.get("version")))


def parse_pixel_body(body: bytes, content_type: str, backend: str | None, max_images: int,
                     optional: bool = False) -> tuple[np.ndarray | None, Any]:
    """Pixels from a JSON ``{"pixels": ..., "backend": ...}`` or ``.npy`` body, and the backend value given (or
    ``backend``, the query's); for /classify_array and /parity. ``optional``: a JSON object without pixels
    (or with ``"pixels": null``, as BentoML's client sends an omitted argument) gives ``None``."""
    if content_type in NPY_CONTENT_TYPES:
        array = load_npy(body)
    elif content_type in ("application/json", ""):
        try:
            payload = json.loads(body)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise RequestError(f"body is not valid JSON: {exc}", 400) from None
        except RecursionError:  # e.g. 100,000 nested brackets, found by fuzzing the v2 twin of this parser
            raise RequestError("body is nested too deeply to be pixels", 400) from None
        if not isinstance(payload, dict) or ("pixels" not in payload and not optional):
            raise RequestError("expected a JSON object with a 'pixels' field", 400)
        unknown = sorted(set(payload) - {"pixels", "backend"})
        if unknown:
            raise RequestError(f"unknown field(s) {unknown}; expected 'pixels' and optional 'backend'", 400)
        array, backend = payload.get("pixels"), payload.get("backend", backend)
        if array is None and optional:
            return None, backend
    else:
        raise RequestError(f"unsupported Content-Type {content_type!r}: send application/json or a .npy body "
                           "(application/x-npy)", 415)
    return validate_pixels(array, max_images), backend


def encode_optional_pixels(value: np.ndarray | None, info: SerializationInfo) -> Any:
    """Pixels as BentoML's tensor type encodes them (nested lists in JSON), and ``None`` as null: BentoML's own
    encoder asserts an array, so a proxy built from our class could not send /parity without pixels."""
    if value is None:
        return None
    return np.asarray(value).tolist() if info.mode_is_json() else value


OptionalPixelTensor = Annotated[PixelTensor, PlainSerializer(encode_optional_pixels)]


class ParityInput(bentoml.IODescriptor):
    """Images as for /classify_array (JSON ``{"pixels": ...}`` or a ``.npy`` body), or none (no body, ``{}`` or
    ``{"pixels": null}``): the bundled samples."""

    # A tensor with a default rather than ``PixelTensor | None``: BentoML's client encodes an array only when
    # the field's schema says "tensor" at its top, not inside an anyOf with null.
    pixels: OptionalPixelTensor = Field(None, description="N x 28 x 28 whole numbers 0-255; none: the ten bundled "
                                                  "sample images")

    @classmethod
    async def from_http_request(cls, request: Request, serde: Any) -> ParityInput:
        config = serving(request).config
        body = await read_body(request, config.max_body_bytes, allow_empty=True)
        if not body:
            return cls.model_construct(pixels=None)
        pixels, backend = parse_pixel_body(body, _content_type(request), request.query_params.get("backend"),
                                           config.max_images, optional=True)
        if backend is not None:
            raise RequestError("/parity runs every loaded backend; it takes no 'backend'", 400)
        return cls.model_construct(pixels=pixels)
