"""The annotators' labeling page: static HTML, JS and CSS; all its data comes from the token-authenticated API."""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter
from fastapi.responses import FileResponse

from service.schemas.common import ProjectId
from storage.errors import NotFound

router = APIRouter(include_in_schema=False)

STATIC = Path(__file__).resolve().parent.parent / "static"
ASSET_TYPES = {".js": "text/javascript", ".css": "text/css"}
# The page keeps the API token in localStorage, so it allows no script, style or image from anywhere else.
PAGE_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' blob:; connect-src 'self'; "
        "form-action 'none'; base-uri 'none'; frame-ancestors 'none'"
    ),
    "Referrer-Policy": "no-referrer",
    "X-Content-Type-Options": "nosniff",
    "Cache-Control": "no-cache",
}


@router.get("/label/{project_id}")
def label_page(project_id: ProjectId) -> FileResponse:
    return FileResponse(STATIC / "label.html", media_type="text/html", headers=PAGE_HEADERS)


@router.get("/static/{name}")
def asset(name: str) -> FileResponse:
    path = STATIC / name
    if path.suffix not in ASSET_TYPES or path.parent != STATIC or not path.is_file():
        raise NotFound(f"no static file {name!r}", code="static_not_found")
    headers = {"X-Content-Type-Options": "nosniff", "Cache-Control": "no-cache"}
    return FileResponse(path, media_type=ASSET_TYPES[path.suffix], headers=headers)
