"""Which runs a report covers: one pipeline run, the rounds of an evolve run, or the runs behind a release."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from factory.warehouse import Warehouse

#: runs made by `factory eval` (and its paired comparisons): they have no funnel to show on their own
EVAL_PIPELINES = ("eval", "eval-compare")


class ReportError(ValueError):
    """A report that cannot be made as asked; the message is one line naming what to change."""


@dataclass(frozen=True)
class Scope:
    kind: Literal["run", "evolve", "release"]
    name: str  # the run id, evolve id or release ref the report is about
    run_ids: list[str] = field(default_factory=list)  # the pipeline runs whose records are shown
    evolve_id: str | None = None
    release: str | None = None

    @property
    def title(self) -> str:
        return {"run": "run", "evolve": "evolve run", "release": "release"}[self.kind] + f" {self.name}"


def _evolve_scope(wh: Warehouse, evolve_id: str) -> Scope:
    run_ids: list[str] = []
    if "rounds" in wh.table_names():
        rounds = wh.query("SELECT run_id FROM rounds WHERE evolve_id = ? ORDER BY round", [evolve_id])
        run_ids = rounds["run_id"].to_list()
    return Scope("evolve", evolve_id, run_ids, evolve_id=evolve_id)


def resolve(wh: Warehouse, run_id: str | None = None, evolve: str | None = None,
            release: str | None = None) -> Scope:
    """The scope asked for; with nothing asked, the latest pipeline or evolve run in the warehouse."""
    if sum(x is not None for x in (run_id, evolve, release)) > 1:
        raise ReportError("give one of RUN_ID, --evolve NAME or --release NAME@VERSION")
    if not wh.catalog_path.exists():
        raise ReportError(f"no warehouse at {wh.root} (run a pipeline first, or pass --warehouse)")
    if release is not None:
        from factory import releases

        try:
            rel = releases.open(release, wh, verify=False)
        except releases.ReleaseError as exc:
            raise ReportError(str(exc)) from None
        return Scope("release", rel.ref, list(rel.manifest.get("run_ids", [])), release=rel.ref)
    if evolve is not None:
        found = wh.query("""SELECT run_id FROM runs WHERE run_id = ? OR pipeline = 'evolve:' || ?
                            ORDER BY run_id = ? DESC, started_at DESC LIMIT 1""", [evolve, evolve, evolve])
        if found.is_empty():
            raise ReportError(f"no evolve run named {evolve!r} in {wh.root} (give the pipeline's name or the "
                              "evolve id; see `factory status`)")
        return _evolve_scope(wh, found.item())
    if run_id is not None:
        found = wh.query("SELECT pipeline FROM runs WHERE run_id = ?", [run_id])
        if found.is_empty():
            raise ReportError(f"no run {run_id!r} in {wh.root} (see `factory status`)")
        if (found.item() or "").startswith("evolve:"):
            return _evolve_scope(wh, run_id)
        return Scope("run", run_id, [run_id])
    # a finished evolve round's run belongs to its evolve run, which is reported as a whole
    rounds = "AND run_id NOT IN (SELECT run_id FROM rounds)" if "rounds" in wh.table_names() else ""
    latest = wh.query(f"""SELECT run_id, pipeline FROM runs WHERE pipeline NOT IN {EVAL_PIPELINES} {rounds}
                          ORDER BY started_at DESC LIMIT 1""")
    if latest.is_empty():
        raise ReportError(f"no pipeline run in {wh.root} to report on (run one with `factory run`)")
    latest_id, pipeline = latest.row(0)
    if (pipeline or "").startswith("evolve:"):
        return _evolve_scope(wh, latest_id)
    return Scope("run", latest_id, [latest_id])
