"""What the benchmarks share for bulk-inserting images (``service.launcher`` runs a real server).

The benchmarks run as scripts (``.venv/bin/python bench/ingest.py``), so Python puts ``bench/`` on
``sys.path`` and they import this module as ``from _rows import ...``.
"""

from __future__ import annotations

from typing import Any

from storage.models import ImageSource


def image_row(project_id: int, sha: str, **overrides: Any) -> dict[str, Any]:
    """A row for a bulk ``insert(Image)`` of an 8x8 100-byte PNG upload with no blob behind it.

    ``overrides`` supply the queue and labeling columns, which differ between benchmarks.
    """
    return {
        "project_id": project_id,
        "sha256": sha,
        "thumbnail_sha256": sha,
        "width": 8,
        "height": 8,
        "format": "PNG",
        "byte_size": 100,
        "source": ImageSource.upload,
        **overrides,
    }
