"""SQLite: a table (the one with question/answer columns, or --table) or a --query, read row by row."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from pathlib import Path

from gptmed.core import DataError
from gptmed.data.readers.detect import SQLITE_MAGIC
from gptmed.data.readers.options import RawRecord, ReadOptions, resolve_fields, show_names

__all__ = ["read_sqlite"]


def _quote_ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def read_sqlite(path: Path, opts: ReadOptions, source: str) -> Iterator[RawRecord]:
    """The rows of the table (or the query) as raw records; the database is opened read-only."""
    with open(path, "rb") as fh:
        magic = fh.read(len(SQLITE_MAGIC))
    if magic != SQLITE_MAGIC:
        raise DataError("not an SQLite database (bad header)", where=source, hint="pass the right --format")
    conn = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)
    conn.text_factory = _sqlite_text
    try:
        cursor, label = _select(conn, opts, source)
        try:
            for index, (q, a) in enumerate(cursor, start=1):
                yield f"{source}: {label} {index}", q, a
        except sqlite3.Error as exc:
            raise DataError(f"reading the database failed: {exc}", where=source) from None
    except sqlite3.DatabaseError as exc:
        raise DataError(f"cannot read the SQLite database: {exc}", where=source) from None
    finally:
        conn.close()


def _select(
    conn: sqlite3.Connection, opts: ReadOptions, source: str
) -> tuple[Iterator[tuple[object, object]], str]:
    """The ``(question, answer)`` rows to read and what to call one (``table 'qa' row``)."""
    tables = [
        r[0]
        for r in conn.execute("SELECT name FROM sqlite_master WHERE type IN ('table','view') ORDER BY name")
    ]
    if opts.query is not None:
        if opts.table is not None:
            raise DataError("pass --table or --query, not both", where=source)
        try:
            cursor = conn.execute(opts.query)
        except sqlite3.Error as exc:
            raise DataError(
                f"the query failed: {exc}", where=source, hint=f"tables in the database: {show_names(tables)}"
            ) from None
        if cursor.description is None:
            raise DataError("the query returns no columns (not a SELECT?)", where=source)
        names = [d[0] for d in cursor.description]
        qf, af = resolve_fields(names, opts, f"{source}: query")
        qi, ai = names.index(qf), names.index(af)
        return ((row[qi], row[ai]) for row in cursor), "query row"
    table = opts.table
    if table is None:
        table = _guess_table(conn, tables, opts, source)
    elif table not in tables:
        raise DataError(
            f"no table {table!r}; the tables are {show_names(tables)}", where=source, hint="pass --table NAME"
        )
    cols = [r[1] for r in conn.execute(f"PRAGMA table_info({_quote_ident(table)})")]
    qf, af = resolve_fields(cols, opts, f"{source}: table {table!r}")
    cursor = conn.execute(f"SELECT {_quote_ident(qf)}, {_quote_ident(af)} FROM {_quote_ident(table)}")
    return cursor, f"table {table!r} row"


def _sqlite_text(data: bytes) -> str | bytes:
    # TEXT that is not UTF-8 comes back as bytes, which the record check reports (never dropped).
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return data


def _guess_table(conn: sqlite3.Connection, tables: list[str], opts: ReadOptions, source: str) -> str:
    if not tables:
        raise DataError("the database has no tables", where=source)
    found: list[str] = []
    described: list[str] = []
    for t in tables:
        cols = [r[1] for r in conn.execute(f"PRAGMA table_info({_quote_ident(t)})")]
        described.append(f"{t}({', '.join(cols)})")
        try:
            resolve_fields(cols, opts, source)
        except DataError:
            continue
        found.append(t)
    if len(found) == 1:
        return found[0]
    what = "several tables could hold" if found else "no table has recognisable"
    raise DataError(
        f"{what} question/answer columns; tables: {'; '.join(described)}",
        where=source,
        hint="pass --table NAME (and --question-field/--answer-field), or --query SQL",
    )
