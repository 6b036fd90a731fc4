"""Alembic environment: the URL comes from settings (or the caller), the metadata from the models."""

from alembic import context
from sqlalchemy import Connection

from storage.db import create_db_engine
from storage.models import Base
from storage.settings import get_settings


def _run(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=Base.metadata,
        compare_type=True,
        render_as_batch=connection.dialect.name == "sqlite",
    )
    with context.begin_transaction():
        context.run_migrations()


connection = context.config.attributes.get("connection")
if connection is not None:
    _run(connection)
else:
    url = context.config.attributes.get("url") or get_settings().resolved_database_url
    engine = create_db_engine(url)
    try:
        with engine.connect() as new_connection:
            _run(new_connection)
    finally:
        engine.dispose()
