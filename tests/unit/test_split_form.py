"""service.inputs.split_form: multipart/form-data split over the body as read, with its limits and refusals."""

from __future__ import annotations

import pytest

from service.inputs import RequestError, split_form

BOUNDARY = "b0undary"
CONTENT_TYPE = f"multipart/form-data; boundary={BOUNDARY}"


def part(name: str, data: bytes, filename: str | None = None) -> bytes:
    disposition = f'form-data; name="{name}"' + (f'; filename="{filename}"' if filename else "")
    return f"--{BOUNDARY}\r\nContent-Disposition: {disposition}\r\n\r\n".encode() + data + b"\r\n"


def form(*parts: bytes) -> bytes:
    return b"".join(parts) + f"--{BOUNDARY}--\r\n".encode()


def test_every_part_in_order_with_its_name_file_name_and_bytes():
    body = form(part("images", b"\x89PNG one\r\nwith a line break", "a.png"), part("top_k", b"3"),
                part("images", b"\x89PNG two", "b.png"))
    parts = split_form(body, CONTENT_TYPE, max_files=2, max_fields=1)
    assert [(p.name, p.filename, p.data) for p in parts] == [
        ("images", "a.png", b"\x89PNG one\r\nwith a line break"), ("top_k", None, b"3"),
        ("images", "b.png", b"\x89PNG two")]


@pytest.mark.parametrize("body,content_type,status,words", [
    (form(*[part("images", b"x", f"{i}.png") for i in range(3)]), CONTENT_TYPE, 413, "more than 2 images"),
    (form(*[part("top_k", b"1") for _ in range(3)]), CONTENT_TYPE, 400, "more than 2 form fields"),
    (form(part("images", b"x", "a.png")), "multipart/form-data", 400, "without a boundary"),
    (form(part("images", b"x", "a.png"))[:-10], CONTENT_TYPE, 400, "closing boundary"),
    (b"not a form at all", CONTENT_TYPE, 400, "malformed"),
])
def test_refusals_say_why(body, content_type, status, words):
    with pytest.raises(RequestError, match=words) as refused:
        split_form(body, content_type, max_files=2, max_fields=2)
    assert refused.value.error_code == status
