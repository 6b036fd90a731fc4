"""A project's link to a Label Studio server: where its images may be fetched from, and the secret that Label
Studio's calls must carry.

Label Studio sends HTTP basic auth to an ML backend when its admin sets it (``auth_method: BASIC_AUTH``), so the
secret travels in a header, never in the URL (URLs end up in access logs, Label Studio's among them). It is
shown once and stored as its sha256, like API tokens.
"""

from __future__ import annotations

import hmac
import secrets
from urllib.parse import urlsplit

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from storage.errors import Conflict, InvalidInput
from storage.models import LabelStudioAnnotation, LabelStudioLink, LabelStudioTask, Project
from storage.users import hash_token

BASIC_AUTH_USER = "labelstudio"


def origin_of(url: str) -> str:
    """``scheme://host[:port]`` of a Label Studio server's URL; InvalidInput for anything more or less."""
    url = url.strip().rstrip("/")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise InvalidInput(f"url {url[:200]!r} is not a URL ({exc})", code="invalid_url") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise InvalidInput(
            f"url {url[:200]!r} must be http:// or https:// and a host, as in http://labelstudio:8080",
            code="invalid_url",
        )
    if parts.username or parts.password or parts.path or parts.query or parts.fragment:
        raise InvalidInput(
            f"url {url[:200]!r} must be only scheme, host and port (no user, path, query or fragment): images are "
            "fetched from that server only",
            code="invalid_url",
        )
    host = parts.hostname.lower()
    host = f"[{host}]" if ":" in host else host
    return f"{parts.scheme}://{host}" + (f":{port}" if port is not None else "")


def get_link(session: Session, *, project_id: int) -> LabelStudioLink:
    link = session.get(LabelStudioLink, project_id)
    if link is None:
        raise Conflict(
            f"project {project_id} is not connected to Label Studio: run `labelwheel labelstudio connect` or PUT "
            f"/api/v1/projects/{project_id}/labelstudio",
            code="not_connected",
        )
    return link


def connect_project(
    session: Session, *, project: Project, url: str, access_token: str, ls_project_id: int | None = None
) -> tuple[LabelStudioLink, str]:
    """Create or replace the project's link; returns it and a new secret (shown once: the old one stops working)."""
    if not access_token.strip() or len(access_token) > 200:
        raise InvalidInput("access_token must be Label Studio's API token (1 to 200 characters)", code="invalid_token")
    secret = secrets.token_urlsafe(32)
    link = session.get(LabelStudioLink, project.id) or LabelStudioLink(project_id=project.id)
    link.url, link.access_token, link.secret_hash = origin_of(url), access_token.strip(), hash_token(secret)
    link.ls_project_id = ls_project_id if ls_project_id is not None else link.ls_project_id
    session.add(link)
    session.flush()
    return link, secret


def secret_matches(link: LabelStudioLink, secret: str) -> bool:
    return hmac.compare_digest(hash_token(secret), link.secret_hash)


def link_counts(session: Session, *, project_id: int) -> dict[str, int]:
    """How much of the Label Studio project labelwheel holds: tasks fetched, annotations received, tasks pushed."""
    tasks = session.scalar(select(func.count()).where(LabelStudioTask.project_id == project_id)) or 0
    pushed = (
        session.scalar(
            select(func.count()).where(
                LabelStudioTask.project_id == project_id, LabelStudioTask.pushed_score.is_not(None)
            )
        )
        or 0
    )
    annotations = session.scalar(select(func.count()).where(LabelStudioAnnotation.project_id == project_id)) or 0
    return {"tasks": tasks, "annotations": annotations, "pushed": pushed}
