"""The annotators' labeling page and the API docs: static HTML, JS and CSS served from the package (nothing from
a CDN, so both work without internet); all their data comes from the API."""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path

from fastapi import APIRouter
from fastapi.responses import FileResponse

from service.schemas.common import ProjectId
from storage.errors import NotFound

router = APIRouter(include_in_schema=False)


class ConsolePage(StrEnum):
    overview = "overview"
    models = "models"
    quality = "quality"
    mining = "mining"
    people = "people"
    monitoring = "monitoring"


STATIC = Path(__file__).resolve().parent.parent / "static"
# Swagger UI: swagger-ui-dist 5.35.0 from npm, its bundle, stylesheet, icon and licence files unchanged.
SWAGGER_UI = STATIC / "swagger-ui"
ASSET_TYPES = {".js": "text/javascript", ".css": "text/css", ".png": "image/png"}
# The pages allow no script, style or image from anywhere else (the labeling page keeps the API token in
# localStorage) and no inline script: each page's start-up code is a file of its own. Swagger UI draws its
# icons from data: URLs.
CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' {images}; connect-src 'self'; "
    "form-action 'none'; base-uri 'none'; frame-ancestors 'none'"
)
PAGE_HEADERS = {
    "Referrer-Policy": "no-referrer",
    "X-Content-Type-Options": "nosniff",
    "Cache-Control": "no-cache",
}


@router.get("/label/{project_id}")
def label_page(project_id: ProjectId) -> FileResponse:
    headers = {"Content-Security-Policy": CSP.format(images="blob:"), **PAGE_HEADERS}
    return FileResponse(STATIC / "label.html", media_type="text/html", headers=headers)


@router.get("/")
def console_home() -> FileResponse:
    return _console()


@router.get("/projects/{project_id}/{page}")
def console_page(project_id: ProjectId, page: ConsolePage) -> FileResponse:
    return _console()


def _console() -> FileResponse:
    """The console: one page whose script draws the view its path names, from the API with the token."""
    headers = {"Content-Security-Policy": CSP.format(images="blob:"), **PAGE_HEADERS}
    return FileResponse(STATIC / "console.html", media_type="text/html", headers=headers)


@router.get("/docs")
def docs_page() -> FileResponse:
    headers = {"Content-Security-Policy": CSP.format(images="data:"), **PAGE_HEADERS}
    return FileResponse(STATIC / "docs.html", media_type="text/html", headers=headers)


@router.get("/static/{name}")
def asset(name: str) -> FileResponse:
    return _asset(STATIC, name)


@router.get("/static/swagger-ui/{name}")
def swagger_ui_asset(name: str) -> FileResponse:
    return _asset(SWAGGER_UI, name)


def _asset(folder: Path, name: str) -> FileResponse:
    path = folder / name
    if path.suffix not in ASSET_TYPES or path.parent != folder or not path.is_file():
        raise NotFound(f"no static file {name!r}", code="static_not_found")
    headers = {"X-Content-Type-Options": "nosniff", "Cache-Control": "no-cache"}
    return FileResponse(path, media_type=ASSET_TYPES[path.suffix], headers=headers)
