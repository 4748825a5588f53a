"""The demo page, mounted by the service at /demo: one self-contained HTML file (no CDN, no external assets) whose
script calls the service's own endpoints, so the page exercises exactly what API clients get."""
from __future__ import annotations

from pathlib import Path

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import FileResponse
from starlette.routing import Route

PAGE = Path(__file__).with_name("static") / "demo.html"


async def page(request: Request) -> FileResponse:
    return FileResponse(PAGE, media_type="text/html; charset=utf-8")


# Starlette redirects /demo to /demo/, so the page's relative API URLs ("../classify") resolve under any prefix.
app = Starlette(routes=[Route("/", page)])
