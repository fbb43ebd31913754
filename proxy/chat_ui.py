"""`GET /`: the chat page, a few static files from `proxy/ui/` served by railguard itself.

The files are read once when the app is built and kept in memory. The page's assets live
under `ui/<version>/`, the version being a hash of every file, so they are cached for good
while the page itself is revalidated on each load: a new release is picked up at once.
Every answer carries a Content-Security-Policy that lets the page talk to railguard only.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

from aiohttp import web

UI_DIR = Path(__file__).parent / "ui"

CONTENT_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".svg": "image/svg+xml",
}

# Only railguard itself: no inline script or style, no CDN, no frames, no form posts away.
CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
    "img-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
SECURITY_HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
}
PAGE_CACHE = "no-cache"  # always revalidated: it names the current assets
ASSET_CACHE = "public, max-age=31536000, immutable"  # versioned paths never change


@dataclass(frozen=True, slots=True)
class Asset:
    body: bytes
    content_type: str
    etag: str


def _asset(body: bytes, content_type: str) -> Asset:
    return Asset(body, content_type, '"' + hashlib.sha256(body).hexdigest()[:32] + '"')


class ChatPage:
    """The page and its assets, loaded once; handlers answer from memory."""

    def __init__(self, ui_dir: Path = UI_DIR) -> None:
        files: dict[str, bytes] = {}
        for path in sorted(ui_dir.iterdir()):
            if path.is_file() and path.suffix in CONTENT_TYPES:
                files[path.name] = path.read_bytes()
        if "index.html" not in files:
            raise ValueError(f"chat page: {ui_dir / 'index.html'} is missing")
        digest = hashlib.sha256()
        for name, body in files.items():
            digest.update(name.encode() + b"\0" + body + b"\0")
        self.version = digest.hexdigest()[:12]
        page = files.pop("index.html").replace(b"{{UI}}", f"ui/{self.version}".encode())
        self.page = _asset(page, CONTENT_TYPES[".html"])
        self.assets = {
            name: _asset(body, CONTENT_TYPES[Path(name).suffix]) for name, body in files.items()
        }

    def add_routes(self, app: web.Application, prefix: str) -> None:
        """`{prefix}/` serves the page; `{prefix}` redirects there so relative URLs work."""
        app.router.add_get(f"{prefix}/", self.index)
        if prefix:
            app.router.add_get(prefix, self.slash)
        app.router.add_get(f"{prefix}/ui/{{version}}/{{name}}", self.asset)

    async def index(self, request: web.Request) -> web.StreamResponse:
        return _send(request, self.page, PAGE_CACHE)

    async def slash(self, request: web.Request) -> web.StreamResponse:
        # Relative to `/prefix`, `prefix/` is `/prefix/`, whatever proxy sits in front.
        last = request.path.rstrip("/").rsplit("/", 1)[-1]
        query = f"?{request.query_string}" if request.query_string else ""
        raise web.HTTPPermanentRedirect(f"{last}/{query}")

    async def asset(self, request: web.Request) -> web.StreamResponse:
        asset = self.assets.get(request.match_info["name"])
        if asset is None or request.match_info["version"] != self.version:
            raise web.HTTPNotFound()
        return _send(request, asset, ASSET_CACHE)


def _send(request: web.Request, asset: Asset, cache: str) -> web.Response:
    headers = {**SECURITY_HEADERS, "Cache-Control": cache, "ETag": asset.etag}
    if asset.etag in request.headers.get("If-None-Match", ""):
        return web.Response(status=304, headers=headers)
    headers["Content-Type"] = asset.content_type
    return web.Response(body=asset.body, headers=headers)
