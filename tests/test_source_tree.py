"""Every source file of the checkout reaches a clean clone: none is hidden by ``.gitignore``.

A ``releases/`` pattern once hid the whole ``factory/releases/`` package: every test passed here and CI's
clean clone could not import it. This names any such file before it is committed.
"""

from __future__ import annotations

import shutil
import subprocess

import pytest

from tests.conftest import ROOT

SOURCE_FOLDERS = ("factory", "stages", "schemas", "data", "bench", "tests", ".ci")
#: build and tool leftovers, which are meant to stay out
LEFTOVERS = ("__pycache__/", ".pyc", ".egg-info/")


def test_no_source_file_is_ignored_by_git():
    if shutil.which("git") is None or not (ROOT / ".git").exists():
        pytest.skip("not a git checkout: nothing can be left out of a commit")
    out = subprocess.run(["git", "ls-files", "--others", "--ignored", "--exclude-standard", "--", *SOURCE_FOLDERS],
                         cwd=ROOT, capture_output=True, text=True, check=True).stdout.splitlines()
    hidden = [p for p in out if not any(mark in p for mark in LEFTOVERS)]
    assert not hidden, (f"{len(hidden)} source file(s) are ignored by .gitignore and would be missing from a clean "
                        f"clone (fix the pattern): {', '.join(hidden[:5])}")


def test_the_check_sees_an_ignored_file(tmp_path):
    """The git call above really lists ignored files (a pattern like the one that hid factory/releases/)."""
    if shutil.which("git") is None:
        pytest.skip("git is not installed")
    subprocess.run(["git", "init", "-q", str(tmp_path)], check=True)
    (tmp_path / ".gitignore").write_text("releases/\n")
    (tmp_path / "factory" / "releases").mkdir(parents=True)
    (tmp_path / "factory" / "releases" / "spec.py").write_text("")
    out = subprocess.run(["git", "ls-files", "--others", "--ignored", "--exclude-standard", "--", "factory"],
                         cwd=tmp_path, capture_output=True, text=True, check=True).stdout.splitlines()
    assert out == ["factory/releases/spec.py"]
