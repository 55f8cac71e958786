"""Immutable, versioned dataset releases in the Hugging Face Hub layout, and the consumer's API.

A release is a folder ``<warehouse>/releases/<name>/<version>/``::

    README.md                                  dataset card: YAML metadata (configs, dataset_info…) + body
    manifest.json                              schemas/release_manifest: lineage, funnel, file checksums
    data/sft/train-00000-of-00001.parquet      one folder of shards per config (sft, preference)

``datasets.load_dataset(path, "sft")`` reads it as it is, and so does the Hub once pushed. The folders
are the source of truth; the catalog's ``releases`` table indexes them for ``factory sql``.

One concern per module: ``spec`` (what to publish, errors), ``naming`` (versions, references), ``gather``
(the records), ``shards`` (Parquet files), ``manifest`` (checksums, ``Release``), ``catalog`` (the
``releases`` table), ``views`` (SQL), ``publishing`` and ``consumer`` (``open``). Import from here.
"""

from factory.releases import views
from factory.releases.catalog import catalog_frame, register, sync_catalog
from factory.releases.consumer import default_warehouse, open
from factory.releases.gather import PREFERENCE_COLUMNS, SFT_COLUMNS, Gathered, gather
from factory.releases.manifest import FileEntry, Release, content_hash, load_manifest, validate_manifest
from factory.releases.naming import (
    FIRST_VERSION,
    bump,
    parse_ref,
    parse_version,
    release_names,
    releases_root,
    versions,
)
from factory.releases.publishing import PublishResult, publish, render_card
from factory.releases.shards import sort_by_id, write_config
from factory.releases.spec import ChecksumError, ReleaseConflict, ReleaseError, ReleaseSpec

__all__ = [
    "FIRST_VERSION", "PREFERENCE_COLUMNS", "SFT_COLUMNS", "ChecksumError", "FileEntry", "Gathered", "PublishResult",
    "Release", "ReleaseConflict", "ReleaseError", "ReleaseSpec", "bump", "catalog_frame", "content_hash",
    "default_warehouse", "gather", "load_manifest", "open", "parse_ref", "parse_version", "publish", "register",
    "release_names", "releases_root", "render_card", "sort_by_id", "sync_catalog", "validate_manifest", "versions",
    "views", "write_config",
]
