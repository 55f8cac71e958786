"""Names and versions that become folder names: one strict, ASCII-only rule everywhere.

Release, pipeline and dataset names and release versions are path components and identities: two
spellings of one version (``01.0.0``, ``１.０.０``, ``١.٠.٠``) or a name ending in a newline would publish
duplicates, and a 300-character name fails deep inside the file system. So every one of them is checked
with :func:`re.fullmatch` against explicit ``[0-9]`` / ``[a-z]`` classes (``\\d`` and ``$`` let those through).
"""

from __future__ import annotations

import re
from typing import Annotated

from pydantic import AfterValidator

NAME_PATTERN = r"[a-z0-9][a-z0-9._-]{0,99}"
NAME_RE = re.compile(NAME_PATTERN)
NAME_RULE = "1-100 characters of a-z, 0-9, '.', '_' or '-', starting with a letter or digit"
#: semver core: ASCII digits, no leading zeros
VERSION_RE = re.compile(r"(0|[1-9][0-9]*)\.(0|[1-9][0-9]*)\.(0|[1-9][0-9]*)")
VERSION_RULE = "X.Y.Z with ASCII digits and no leading zeros (e.g. 1.2.0)"


def is_name(value: object) -> bool:
    return isinstance(value, str) and NAME_RE.fullmatch(value) is not None


def is_version(value: object) -> bool:
    return isinstance(value, str) and VERSION_RE.fullmatch(value) is not None


def shown(value: str, limit: int = 40) -> str:
    """``repr`` of a value, shortened: a 300-character name should not fill the error line."""
    return repr(value if len(value) <= limit else value[:limit] + "…") + (f" ({len(value)} characters)"
                                                                         if len(value) > limit else "")


def check_name(value: str, what: str = "name") -> str:
    if not is_name(value):
        raise ValueError(f"{what} {shown(value)} must be {NAME_RULE}")
    return value


def check_version(value: str) -> str:
    if not is_version(value):
        raise ValueError(f"version {shown(value)} must be {VERSION_RULE}")
    return value


#: a pydantic field type for names and versions (errors say the rule)
Name = Annotated[str, AfterValidator(check_name)]
Version = Annotated[str, AfterValidator(check_version)]
