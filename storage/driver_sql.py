"""Core statements compiled once per dialect and run on the DB-API cursor: for the labeling round trip's statements.

A label costs six to eight statements, and running a cached Core statement through ``Connection.execute`` costs
tens of microseconds of Python on top of the driver (cache key, execution context, result metadata, per-row
processing): running them this way instead cut the server's CPU per label by about a fifth
(``bench/labeling_scale.py``). A ``DriverStatement`` keeps what SQLAlchemy would work out on every call (the SQL
text, the parameter order, the fixed parameters, each parameter's and each result column's type processing) from one
compilation per dialect, and runs the statement on the connection's DB-API cursor. The statements stay Core
expressions built from the models, so they follow the schema; values go in and come out exactly as through SQLAlchemy
(the same type processors: UTC datetimes, enums, JSON, booleans), driver errors come out as SQLAlchemy's exceptions,
and ``before_cursor_execute``/``after_cursor_execute`` listeners (tracing, the statement counts of the tests) still
see every statement (``echo`` logging does not).

Not for statements with ``IN`` lists (expanding parameters) or with Python-side column defaults to fill in: such a
statement is refused when first compiled.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, Dialect, Insert, Select, TextClause, Update
from sqlalchemy.exc import DBAPIError


@dataclass
class _Compiled:
    sql: str
    order: tuple[str, ...] | None  # the parameters' names in order, for positional (qmark) drivers
    fixed: dict[str, Any]  # parameters whose values the statement holds (literals, LIMIT)
    binds: tuple[tuple[str, Callable[[Any], Any]], ...]  # the parameters whose values need converting
    types: list[Any]  # each result column's type
    # (column index, processor) for each result column that needs converting; worked out from the first result's
    # description (a driver's processor may depend on the column's type code), None until then.
    results: tuple[tuple[int, Callable[[Any], Any]], ...] | None = None


class DriverStatement:
    """One Core statement run on the DB-API cursor, compiled on first use in each dialect.

    ``keys``: for an INSERT, the columns given (every call passes the same ones)."""

    def __init__(
        self, statement: Select[*tuple[Any, ...]] | Insert | Update | TextClause, *, keys: Sequence[str] | None = None
    ) -> None:
        self.statement = statement
        self.keys = list(keys) if keys is not None else None
        # By dialect and driver: psycopg and psycopg2 are both "postgresql", with other paramstyles and processors.
        self._compiled: dict[tuple[str, str, str], _Compiled] = {}

    def rows(self, connection: Connection, params: Mapping[str, Any]) -> list[tuple[Any, ...]]:
        """Run the statement; its rows (none for a statement without RETURNING)."""
        dialect = connection.dialect
        compiled = self._compiled.get((dialect.name, dialect.driver, dialect.paramstyle)) or self._compile(dialect)
        values = {**compiled.fixed, **params}
        for name, process in compiled.binds:
            values[name] = process(values[name])
        arguments: Any = values if compiled.order is None else tuple(values[name] for name in compiled.order)
        listened = bool(connection.dispatch.before_cursor_execute or connection.dispatch.after_cursor_execute)
        fairy = connection.connection
        cursor = None
        try:
            cursor = fairy.cursor()
            if listened:
                connection.dispatch.before_cursor_execute(connection, cursor, compiled.sql, arguments, None, False)
            cursor.execute(compiled.sql, arguments)
            if listened:
                connection.dispatch.after_cursor_execute(connection, cursor, compiled.sql, arguments, None, False)
            # A statement without result columns of its own (an INSERT that PostgreSQL's compiler gave an implicit
            # RETURNING of the key) answers no rows. Not ``cursor.description`` on every call: psycopg builds it anew.
            found = cursor.fetchall() if compiled.types else []
            if compiled.results is None and found:
                compiled.results = _result_processors(dialect, compiled.types, cursor.description)
        except dialect.loaded_dbapi.Error as error:
            invalidated = dialect.is_disconnect(error, fairy.dbapi_connection, cursor)
            if invalidated:
                connection.invalidate(error)
            raise DBAPIError.instance(
                compiled.sql,
                arguments,
                error,
                dialect.loaded_dbapi.Error,
                connection_invalidated=invalidated,
                hide_parameters=connection.engine.hide_parameters,
                dialect=dialect,
            ) from error
        finally:
            if cursor is not None:
                with contextlib.suppress(Exception):  # an invalidated connection's cursor may refuse; the error stands
                    cursor.close()
        if not compiled.results:
            return list(found)
        converted = []
        for row in found:
            columns = list(row)
            for i, process in compiled.results:
                columns[i] = process(columns[i])
            converted.append(tuple(columns))
        return converted

    def first(self, connection: Connection, params: Mapping[str, Any]) -> tuple[Any, ...] | None:
        found = self.rows(connection, params)
        return found[0] if found else None

    def _compile(self, dialect: Dialect) -> _Compiled:
        compiled = self.statement.compile(
            dialect=dialect, column_keys=self.keys, compile_kwargs={"render_postcompile": True}
        )
        if getattr(compiled, "insert_prefetch", None) or getattr(compiled, "update_prefetch", None):
            raise ValueError(f"a column default would need filling in: pass every column of {self.statement}")
        names = compiled.bind_names  # each parameter of the statement, by the name it has in the SQL
        if any(bind.expanding for bind in names):
            raise ValueError(f"expanding (IN) parameters are not supported: {self.statement}")
        fixed, binds = {}, {}
        for bind, name in names.items():
            process = bind.type.dialect_impl(dialect).bind_processor(dialect)
            if not bind.required:
                fixed[name] = bind.effective_value if process is None else process(bind.effective_value)
            elif process is not None:
                binds[name] = process
        if isinstance(self.statement, Select):
            types = [c.type for c in self.statement.selected_columns]
        elif isinstance(self.statement, Insert | Update):
            types = [d["type"] for d in self.statement.returning_column_descriptions]
        else:
            types = []
        ready = _Compiled(
            sql=compiled.string,
            order=tuple(compiled.positiontup) if compiled.positional and compiled.positiontup is not None else None,
            fixed=fixed,
            binds=tuple(binds.items()),
            types=types,
        )
        self._compiled[(dialect.name, dialect.driver, dialect.paramstyle)] = ready
        return ready


def _result_processors(
    dialect: Dialect, types: list[Any], description: Sequence[Any]
) -> tuple[tuple[int, Callable[[Any], Any]], ...]:
    processors = (
        t.dialect_impl(dialect).result_processor(dialect, column[1])
        for t, column in zip(types, description, strict=True)
    )
    return tuple((i, p) for i, p in enumerate(processors) if p is not None)
