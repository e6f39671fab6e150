"""Parquet (the ``parquet`` extra: pyarrow): the two columns read in batches of 4096 rows."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from gptmed.core import DataError
from gptmed.data.readers.options import RawRecord, ReadOptions, resolve_fields

__all__ = ["read_parquet"]


def read_parquet(path: Path, opts: ReadOptions, source: str) -> Iterator[RawRecord]:
    """The rows of a Parquet file as raw records (a null or non-string cell is an invalid record)."""
    try:
        import pyarrow as pa  # type: ignore[import-not-found,unused-ignore]
        import pyarrow.parquet as pq  # type: ignore[import-not-found,unused-ignore]
    except ImportError:
        raise DataError(
            "reading Parquet needs pyarrow", where=source, hint='pip install "gptmed-data[parquet]"'
        ) from None
    try:
        pf = pq.ParquetFile(path)
        names = list(pf.schema_arrow.names)
        qf, af = resolve_fields(names, opts, source)
        index = 0
        for batch in pf.iter_batches(columns=[qf, af], batch_size=4096):
            qs, as_ = batch.column(qf).to_pylist(), batch.column(af).to_pylist()
            for q, a in zip(qs, as_, strict=True):
                index += 1
                yield f"{source}: row {index}", q, a
    except (pa.ArrowException, OSError) as exc:
        raise DataError(
            f"cannot read the Parquet file: {exc}",
            where=source,
            hint="check that it is a complete Parquet file",
        ) from None
