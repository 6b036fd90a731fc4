"""Where the local commands look for their data, said in every "not found" they print."""

from __future__ import annotations

from storage.settings import Settings


def where_it_looked(settings: Settings) -> str:
    """Where a command looked: a name that is "not found" most often lives in another data directory."""
    if settings.database_url:
        from sqlalchemy.engine import make_url

        url = make_url(settings.database_url).render_as_string(hide_password=True)
        return f"in the database {url} (LABELWHEEL_DATABASE_URL)"
    return f"in the data directory {settings.data_dir.resolve()} (LABELWHEEL_DATA_DIR)"
