"""``factory report``: one self-contained HTML page about a run, an evolve run or a release.

The modules split the work: :mod:`scope` picks the runs, :mod:`gather` reads what the page shows from
the warehouse with SQL, :mod:`figures` builds the plotly figures and :mod:`page` writes the HTML, with
plotly.js, the figures and a sample of the records inline, so the file opens offline from the disk.
"""

from __future__ import annotations

import os
from pathlib import Path

from factory.report.gather import BROWSER_ROWS, ReportData, gather
from factory.report.scope import ReportError, Scope, resolve
from factory.warehouse import Warehouse

__all__ = ["BROWSER_ROWS", "ReportData", "ReportError", "Scope", "default_path", "gather", "resolve", "write_report"]


def default_path(wh: Warehouse, scope: Scope) -> Path:
    """``<warehouse>/reports/<run, evolve id or release>.html``."""
    return wh.root / "reports" / f"{scope.name.replace('@', '-')}.html"


def write_report(wh: Warehouse, output: str | os.PathLike[str] | None = None, *, run_id: str | None = None,
                 evolve: str | None = None, release: str | None = None, usd_per_mtok: float | None = None,
                 browser_rows: int = BROWSER_ROWS) -> Path:
    """Write the report of a run (default: the latest), an evolve run or a release; returns its path.

    The file is written under a temporary name and renamed, so a reader never opens half a page.
    """
    from factory.report.page import render

    scope = resolve(wh, run_id=run_id, evolve=evolve, release=release)
    data = gather(wh, scope, browser_rows=browser_rows)
    html = render(data, str(wh.root), usd_per_mtok)
    path = Path(output) if output is not None else default_path(wh, scope)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(html, encoding="utf-8")
    os.replace(tmp, path)
    return path
