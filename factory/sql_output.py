"""What ``factory sql`` does with a result: a capped table, or CSV / JSON / Parquet streamed batch by batch.

The limits of the query (time, memory) must hold for the output too: a 3-million-row table once took
minutes to draw after a 2-second query, and a Parquet export of ``range(500000000)`` grew to 4 GB of
memory under a 1 GB limit. So nothing here holds more than one Arrow batch (the table keeps only the
rows it shows), every batch is checked against the query's deadline, and files are written under a
temporary name with a byte cap, then renamed: a failed or stopped export leaves no partial file.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq

from factory.faults import human_bytes, writing
from factory.sql import QueryError, Result, parse_bytes

#: rows a table shows unless ``--limit`` says otherwise
DEFAULT_TABLE_ROWS = 1_000
#: the largest CSV / JSON / Parquet output (a guard for the disk, like the memory limit for RAM)
DEFAULT_MAX_OUTPUT = os.environ.get("FACTORY_SQL_MAX_OUTPUT", "10GB")


@dataclass
class Shown:
    """The rows a table shows, how many rows the result had, and whether the count is complete."""

    frame: pl.DataFrame
    total: int
    counted_all: bool

    def note(self) -> str | None:
        if self.total <= self.frame.height:
            return None
        more = f"{self.total:,} rows" if self.counted_all else f"more than {self.total:,} rows"
        return (f"showing the first {self.frame.height:,} of {more} (--limit N shows more; -f csv -o FILE "
                "writes them all)")


def to_frame(batch: pa.RecordBatch) -> pl.DataFrame:
    try:
        return pl.from_arrow(batch, rechunk=False)  # type: ignore[return-value]
    except Exception as exc:  # a type polars cannot take (e.g. INTERVAL): one line, not a traceback
        raise QueryError(f"cannot convert the result: {str(exc).splitlines()[0]} (cast that column to VARCHAR)") \
            from None


def table_rows(result: Result, limit: int) -> Shown:
    """The first ``limit`` rows; the rest are counted (not kept) while the time limit allows."""
    kept: list[pl.DataFrame] = []
    have = total = 0
    try:
        for batch in result.batches:
            total += batch.num_rows
            if have < limit:
                part = to_frame(batch.slice(0, limit - have))
                kept.append(part)
                have += part.height
    except QueryError:
        if total <= limit:  # the query itself did not finish: nothing to show
            raise
        return Shown(_concat(kept, result.schema), total, counted_all=False)
    return Shown(_concat(kept, result.schema), total, counted_all=True)


def _concat(frames: list[pl.DataFrame], schema: pa.Schema) -> pl.DataFrame:
    if frames:
        return pl.concat(frames, how="vertical_relaxed")
    return to_frame(pa.RecordBatch.from_pylist([], schema=schema))


def flatten_nested(df: pl.DataFrame) -> pl.DataFrame:
    """Lists, structs and arrays as JSON text, the only faithful way to put them in one CSV field."""
    nested = [c for c, t in df.schema.items() if t.is_nested()]
    if not nested:
        return df
    return df.with_columns(
        pl.Series(c, [None if v is None else json.dumps(v, ensure_ascii=False, default=str)
                      for v in df[c].to_list()], dtype=pl.String)
        for c in nested)


class CappedWriter:
    """A text sink that refuses to grow past ``cap`` bytes."""

    def __init__(self, sink: IO[str], cap: int, cap_text: str):
        self.sink, self.cap, self.cap_text, self.written = sink, cap, cap_text, 0

    def write(self, text: str) -> None:
        self.written += len(text.encode("utf-8"))
        if self.written > self.cap:
            raise QueryError(f"the output passed the {self.cap_text} cap: add a LIMIT, or set "
                             "FACTORY_SQL_MAX_OUTPUT (e.g. 50GB) to allow more")
        self.sink.write(text)


@contextmanager
def output_file(path: Path, text: bool) -> Iterator[Any]:
    """A temporary file beside ``path``, renamed onto it only if everything was written."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with writing(path):
            with open(tmp, "w" if text else "wb", encoding="utf-8" if text else None,
                      newline="" if text else None) as fh:
                yield fh
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_csv(result: Result, sink: IO[str], cap: int, cap_text: str) -> int:
    out = CappedWriter(sink, cap, cap_text)
    rows = seen = 0
    for batch in result.batches:
        df = flatten_nested(to_frame(batch))
        out.write(df.write_csv(include_header=seen == 0))
        rows, seen = rows + df.height, seen + 1
        result.check_time()
    if not seen and result.schema.names:  # no batch at all: still a header
        out.write(",".join(result.schema.names) + "\n")
    return rows


def write_json(result: Result, sink: IO[str], cap: int, cap_text: str) -> int:
    out = CappedWriter(sink, cap, cap_text)
    rows = 0
    out.write("[")
    for batch in result.batches:
        for row in to_frame(batch).iter_rows(named=True):
            out.write(("," if rows else "") + "\n" + json.dumps(row, default=str, ensure_ascii=False, indent=1))
            rows += 1
        result.check_time()
    out.write("\n]\n")
    return rows


#: a Parquet row group gathers batches up to this many rows or bytes (one per batch would be tiny groups)
ROW_GROUP_ROWS = 131_072
ROW_GROUP_BYTES = 64 << 20


def write_parquet(result: Result, fh: IO[bytes], cap: int, cap_text: str) -> int:
    rows = 0
    pending: list[pa.RecordBatch] = []

    def flush() -> None:
        if pending:
            writer.write_table(pa.Table.from_batches(pending, schema=result.schema))
            pending.clear()
        if fh.tell() > cap:
            raise QueryError(f"the output passed the {cap_text} cap ({human_bytes(fh.tell())} written): add a "
                             "LIMIT, or set FACTORY_SQL_MAX_OUTPUT (e.g. 50GB) to allow more")

    with pq.ParquetWriter(fh, result.schema, compression="zstd") as writer:
        for batch in result.batches:
            pending.append(batch)
            rows += batch.num_rows
            if sum(b.num_rows for b in pending) >= ROW_GROUP_ROWS or sum(b.nbytes for b in pending) >= ROW_GROUP_BYTES:
                flush()
            result.check_time()
        flush()
    return rows


def export(result: Result, fmt: str, path: Path | None, stdout: IO[str], max_output: str | None = None) -> int:
    """Write the whole result as ``fmt`` (csv, json, parquet) to ``path`` or stdout; returns the rows."""
    max_output = max_output or DEFAULT_MAX_OUTPUT
    cap = parse_bytes(max_output)
    if fmt == "parquet":
        assert path is not None
        with output_file(path, text=False) as fh:
            return write_parquet(result, fh, cap, max_output)
    write = write_csv if fmt == "csv" else write_json
    if path is None:
        return write(result, stdout, cap, max_output)
    with output_file(path, text=True) as fh:
        return write(result, fh, cap, max_output)
