"""Where releases live and how they are named: ``releases/NAME/X.Y.Z``, version bumps, ``NAME@VERSION``."""

from __future__ import annotations

from pathlib import Path

from factory.names import NAME_RE, NAME_RULE, VERSION_RE, VERSION_RULE, is_version, shown
from factory.releases.spec import ReleaseError
from factory.warehouse import Warehouse

FIRST_VERSION = "1.0.0"


def parse_version(version: str) -> tuple[int, int, int]:
    m = VERSION_RE.fullmatch(version)
    if not m:
        raise ReleaseError(f"version {shown(version)} must be {VERSION_RULE}")
    return int(m[1]), int(m[2]), int(m[3])


def bump(version: str | None, part: str = "patch") -> str:
    """The next version after ``version`` (the first release is 1.0.0)."""
    if version is None:
        return FIRST_VERSION
    major, minor, patch = parse_version(version)
    if part == "major":
        return f"{major + 1}.0.0"
    if part == "minor":
        return f"{major}.{minor + 1}.0"
    if part == "patch":
        return f"{major}.{minor}.{patch + 1}"
    raise ReleaseError(f"bump must be patch, minor or major, not {part!r}")


def releases_root(wh: Warehouse) -> Path:
    return wh.root / "releases"


def versions(wh: Warehouse, name: str) -> list[str]:
    """Published versions of ``name``, oldest first (only complete, moved-in folders count)."""
    folder = releases_root(wh) / name
    if not folder.is_dir():
        return []
    found = [p.name for p in folder.iterdir()
             if VERSION_RE.fullmatch(p.name) and (p / "manifest.json").is_file()]
    return sorted(found, key=parse_version)


def release_names(wh: Warehouse) -> list[str]:
    root = releases_root(wh)
    return sorted(p.name for p in root.iterdir() if p.is_dir() and NAME_RE.fullmatch(p.name)) if root.is_dir() else []


def parse_ref(ref: str) -> tuple[str, str]:
    """``NAME@VERSION`` / ``NAME@latest`` / ``NAME`` as (name, version or "latest")."""
    name, sep, version = ref.partition("@")
    bad_version = version not in ("", "latest") and not is_version(version)
    if not NAME_RE.fullmatch(name) or (sep and not version) or bad_version:
        raise ReleaseError(f"release reference {shown(ref)} must be NAME@VERSION or NAME@latest (NAME: {NAME_RULE}; "
                           f"VERSION: {VERSION_RULE})")
    return name, version or "latest"
