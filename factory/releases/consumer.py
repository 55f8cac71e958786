"""The consumer's side: ``open("NAME@VERSION")`` hands out a release only after its files match the manifest."""

from __future__ import annotations

import os

from factory.releases.manifest import Release, load_manifest
from factory.releases.naming import parse_ref, releases_root, versions
from factory.releases.spec import ReleaseError
from factory.warehouse import Warehouse


def default_warehouse(warehouse: str | os.PathLike[str] | Warehouse | None = None) -> Warehouse:
    """The argument, else ``$FACTORY_WAREHOUSE``, else ``./warehouse``."""
    if isinstance(warehouse, Warehouse):
        return warehouse
    return Warehouse(warehouse or os.environ.get("FACTORY_WAREHOUSE") or "warehouse")


def open(ref: str, warehouse: str | os.PathLike[str] | Warehouse | None = None,  # noqa: A001
         verify: bool = True) -> Release:
    """Open ``NAME@VERSION`` (or ``NAME@latest``) from a warehouse, verifying every file's checksum."""
    wh = default_warehouse(warehouse)
    name, version = parse_ref(ref)
    found = versions(wh, name)
    if not found:
        raise ReleaseError(f"no release named {name!r} in {releases_root(wh)}")
    if version == "latest":
        version = found[-1]
    elif version not in found:
        raise ReleaseError(f"no release {name}@{version} in {releases_root(wh)}; versions: {', '.join(found)}")
    folder = releases_root(wh) / name / version
    release = Release(name, version, folder, load_manifest(folder))
    if verify:
        release.verify()
    return release
