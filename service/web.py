"""The web page at ``/ui/``: try the classifier and compare the backends.

A small Starlette app that the service mounts (``mount_asgi_app``). It only
serves files named in an allow-list built when the app is made; a URL is looked
up in that table and never becomes a filesystem path, so there is no directory
listing and no ``..`` to exploit. The page itself posts to the service's own
endpoints (``/classify``, ``/model_info``) with the same limits as any client.

Served, all read-only:

* ``/ui/`` and the page's files (``service/web/``: HTML, CSS, JS; no inline
  script, nothing from another host);
* ``/ui/samples/<name>.png`` and ``/ui/samples.json``: the ten bundled real
  test images (fashion/samples) and their true labels.

No benchmark view: a Bento carries no ``results/`` file, and a benchmark measured on
another machine says nothing about the server showing it (docs/serving.md, "The web page").

Every answer carries a strict Content-Security-Policy (scripts, styles, images
and requests from this origin only), ``X-Content-Type-Options: nosniff`` and
no framing.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from service.admission import ASGIApp, Receive, Scope, Send

WEB_DIR = Path(__file__).resolve().parent / "web"
PAGE_FILES = ("index.html", "style.css", "app.js", "charts.js", "icon.svg")
CONTENT_TYPES = {
    ".html": "text/html; charset=utf-8", ".css": "text/css; charset=utf-8",
    ".js": "text/javascript; charset=utf-8", ".svg": "image/svg+xml", ".png": "image/png",
}
# 'self' only: no inline script or style, no eval, nothing from another host; forms and frames off.
CONTENT_SECURITY_POLICY = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; "
    "font-src 'none'; object-src 'none'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
SECURITY_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    # Small files that change with the code: revalidate instead of serving a stale page after an upgrade.
    "Cache-Control": "no-cache",
}


def page_files(web_dir: Path = WEB_DIR) -> dict[str, Path]:
    """URL path (below ``/ui/``) -> file, for the page and the sample images: everything the app serves."""
    from fashion.samples import sample_paths

    files = {name: web_dir / name for name in PAGE_FILES}
    files[""] = web_dir / "index.html"
    files.update({f"samples/{path.name}": path for path in sample_paths()})
    return files


def sample_listing() -> list[dict[str, Any]]:
    """The bundled test images: URL (relative to the page), true class id and label, test-set index."""
    from fashion.contract import CLASS_NAMES
    from fashion.samples import sample_paths

    listing = []
    for path in sample_paths():
        class_id, _, rest = path.stem.partition("-")
        listing.append({"url": f"samples/{path.name}", "name": path.name, "class_id": int(class_id),
                        "label": CLASS_NAMES[int(class_id)], "test_index": int(rest.rsplit("test", 1)[1])})
    return listing


def build_web_app(web_dir: Path = WEB_DIR) -> Starlette:
    """The ``/ui`` app.

    Args:
        web_dir: the page's files.

    Returns:
        A Starlette app with security headers on every answer, including 404s.
    """
    files = page_files(web_dir)
    samples = sample_listing()

    async def serve_file(request: Request) -> Response:
        path = files.get(request.path_params["path"])
        if path is None:
            return JSONResponse({"error": "not found"}, status_code=404)
        return Response(path.read_bytes(), media_type=CONTENT_TYPES[path.suffix])

    async def serve_samples(request: Request) -> Response:
        return JSONResponse(samples)

    app = Starlette(routes=[
        Route("/samples.json", serve_samples, methods=["GET", "HEAD"]),
        Route("/{path:path}", serve_file, methods=["GET", "HEAD"]),
    ])
    app.add_middleware(SecurityHeaders)
    return app


class SecurityHeaders:
    """ASGI middleware: add :data:`SECURITY_HEADERS` to every response of the wrapped app."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self.headers = [(k.lower().encode(), v.encode()) for k, v in SECURITY_HEADERS.items()]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)

        async def send_with_headers(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", []), *self.headers]}
            await send(message)

        await self.app(scope, receive, send_with_headers)
