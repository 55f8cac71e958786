"""A config's rows as Parquet shards in the Hub layout, ``data/<config>/train-0000i-of-0000N.parquet``.

The bytes depend only on the records: rows sorted by id, one per id, and a shard count set by the data's
size, never by the machine; so the same records always give the same checksums (and content hash).
"""

from __future__ import annotations

import math
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq

from factory.conversations import PREFERENCE_MESSAGE_COLUMNS, SFT_MESSAGE_COLUMNS
from factory.host import sha256_file
from factory.release_card import SPLIT
from factory.releases.manifest import FileEntry

#: shard size, as in ``datasets.push_to_hub``'s default: big enough for few files, small enough to stream
MAX_SHARD_BYTES = 500 << 20
ROW_GROUP_ROWS = 100_000
MAX_SHARD_ROWS = 250_000
#: near-unique text and id columns: dictionary-encoding them only costs time (and pyarrow then gives up)
UNIQUE_COLUMNS = frozenset({"instruction", "input", "output", "sample_id", "task_id", "parent_ids", "prompt", "chosen",
                            "rejected", "pair_id", "chosen_id", "rejected_id", "score", "margin",
                            *SFT_MESSAGE_COLUMNS, *PREFERENCE_MESSAGE_COLUMNS})
#: long free text: min/max statistics on it help no reader, and cost time to compute
TEXT_COLUMNS = frozenset({"instruction", "input", "output", "prompt", "chosen", "rejected", "gen_params",
                          *SFT_MESSAGE_COLUMNS, *PREFERENCE_MESSAGE_COLUMNS})


def _small_type(t: pa.DataType) -> pa.DataType:
    """Arrow's 32-bit-offset types, which every parquet reader (and the Hub's viewer) maps to `string`/list."""
    if pa.types.is_large_string(t) or pa.types.is_string_view(t):
        return pa.string()
    if pa.types.is_large_binary(t):
        return pa.binary()
    if pa.types.is_large_list(t) or pa.types.is_list_view(t) or pa.types.is_list(t):
        return pa.list_(_small_type(t.value_type))
    if pa.types.is_struct(t):
        return pa.struct([pa.field(f.name, _small_type(f.type)) for f in t])
    return t


def write_config(df: pl.DataFrame, folder: Path, config: str,
                 max_shard_bytes: int = MAX_SHARD_BYTES,
                 max_shard_rows: int = MAX_SHARD_ROWS) -> tuple[list[FileEntry], pa.Schema, int]:
    """Write one config's shards under ``folder``; returns their entries, the schema and the Arrow bytes.

    The shards are written and checksummed in parallel (pyarrow and hashlib release the GIL).
    """
    n = max(1, math.ceil(df.estimated_size() / max_shard_bytes), math.ceil(df.height / max_shard_rows))
    per = max(1, math.ceil(df.height / n))
    (folder / "data" / config).mkdir(parents=True, exist_ok=True)

    def write(i: int) -> tuple[FileEntry, pa.Schema, int]:
        rel = f"data/{config}/{SPLIT}-{i:05d}-of-{n:05d}.parquet"
        part = df.slice(i * per, per).to_arrow()
        part = part.cast(pa.schema([pa.field(f.name, _small_type(f.type)) for f in part.schema]))
        pq.write_table(part, folder / rel, compression="zstd", row_group_size=ROW_GROUP_ROWS,
                       use_dictionary=[c for c in part.schema.names if c not in UNIQUE_COLUMNS],
                       write_statistics=[c for c in part.schema.names if c not in TEXT_COLUMNS])
        entry = FileEntry(rel, sha256_file(folder / rel), (folder / rel).stat().st_size, part.num_rows)
        return entry, part.schema, part.nbytes

    if n == 1:
        done = [write(0)]
    else:
        with ThreadPoolExecutor(max_workers=min(n, os.cpu_count() or 1)) as pool:
            done = list(pool.map(write, range(n)))
    return [d[0] for d in done], done[0][1], sum(d[2] for d in done)


def sort_by_id(df: pl.DataFrame, column: str) -> pl.DataFrame:
    """Rows in id order, one per id (first run wins): the same records always give the same bytes.

    16-hex content ids sort as 64-bit integers, several times faster than as strings; duplicates
    (the same record in two runs) are then neighbours, so finding them is one cheap comparison.
    """
    ids = df[column]
    lengths = ids.str.len_bytes()
    key = ids.str.to_integer(base=16, dtype=pl.UInt64, strict=False) if lengths.min() == lengths.max() == 16 else None
    if key is None or key.null_count():
        out = df.sort(column, maintain_order=True)  # stable: among equal ids, the first-written run comes first
    else:
        out = df.with_columns(key.alias("__key")).sort("__key", maintain_order=True).drop("__key")
    sorted_ids = out[column]
    if out.height > 1 and (sorted_ids.head(-1) == sorted_ids.tail(-1)).any():
        out = out.filter(pl.col(column).is_first_distinct())
    return out
