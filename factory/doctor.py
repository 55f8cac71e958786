"""``factory doctor`` (read-only check) and ``factory repair`` (quarantine and re-make).

doctor reads every registered run file and every release file and compares it with the sha256 the
catalog (or the release's manifest) recorded; it writes nothing. repair moves damaged run files to
``quarantine/``, unregisters them, and re-runs the pipeline of each affected run: the runner makes
exactly the stages that are no longer done, and the call cache answers every model call already paid
for. A damaged release file is restored only when re-making it from its runs gives the very bytes the
manifest promises (a version is never changed); otherwise repair says what to do and exits 1.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from filelock import FileLock

from factory.host import sha256_file
from factory.integrity import (
    Damage,
    check_files,
    quarantine_files,
    quarantine_path,
    registered_files,
    sweep_temporaries,
)
from factory.run_lock import RunBusy, run_lock
from factory.warehouse import Warehouse


@dataclass
class Diagnosis:
    files_checked: int = 0
    releases_checked: int = 0
    damaged: list[Damage] = field(default_factory=list)
    #: not damage, but worth knowing (healed by the next run or publish)
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.damaged


def _release_damage(wh: Warehouse, name: str, version: str, folder: Path) -> list[Damage]:
    """Every file of one release that differs from its manifest (or the manifest itself)."""
    from factory.releases import ReleaseError, load_manifest

    ref = f"{name}@{version}"
    rel = str(folder.relative_to(wh.root))
    try:
        manifest = load_manifest(folder)
    except ReleaseError as exc:
        return [Damage(f"{rel}/manifest.json", str(exc).split(": ", 1)[-1], release=ref)]
    out = []
    listed = set()
    for f in manifest["files"]:
        listed.add(f["path"])
        p = folder / f["path"]
        if not p.is_file():
            out.append(Damage(f"{rel}/{f['path']}", "missing", release=ref))
            continue
        got = sha256_file(p)
        if got != f["sha256"]:
            out.append(Damage(f"{rel}/{f['path']}", f"contents changed (sha256 {got[:12]}… != {f['sha256'][:12]}… "
                                                    "in manifest.json)", release=ref))
    data = folder / "data"
    for p in sorted(data.rglob("*")) if data.is_dir() else []:
        if p.is_file() and str(p.relative_to(folder)) not in listed:
            out.append(Damage(str(p.relative_to(wh.root)), "unexpected file, not in manifest.json", release=ref))
    return out


def diagnose(wh: Warehouse) -> Diagnosis:
    """Check every registered file and every release against its checksum; writes nothing."""
    from factory.releases import catalog_frame, release_names, releases_root, versions

    d = Diagnosis()
    files = registered_files(wh)
    d.files_checked = len(files)
    d.damaged += check_files(wh, files, deep=True, memo=False)
    on_disk = {(n, v) for n in release_names(wh) for v in versions(wh, n)}
    catalog = catalog_frame(wh)
    known = set(zip(catalog["name"].to_list(), catalog["version"].to_list(), strict=True))
    for n, v in sorted(on_disk):
        d.releases_checked += 1
        d.damaged += _release_damage(wh, n, v, releases_root(wh) / n / v)
        if (n, v) not in known:
            d.notes.append(f"release {n}@{v} is not in the catalog yet (the next run or publish registers it)")
    for n, v in sorted(known - on_disk):
        d.damaged.append(Damage(f"releases/{n}/{v}", "the catalog lists it but its folder (or manifest.json) is "
                                "gone", release=f"{n}@{v}"))
    runs = wh.root / "runs"
    for p in sorted(runs.rglob(".*.tmp-*")) if runs.is_dir() else []:
        d.notes.append(f"{p.relative_to(wh.root)}: temporary file of an interrupted write (once its process is "
                       "gone, the run's next start or `factory repair` removes it)")
    return d


# -- repair ----------------------------------------------------------------------------------------------


@dataclass
class RepairResult:
    quarantined: dict[str, Path | None] = field(default_factory=dict)
    rerun: dict[str, list[str]] = field(default_factory=dict)  # run id -> stages made again
    restored: list[str] = field(default_factory=list)  # release files put back
    unresolved: list[str] = field(default_factory=list)  # one line each: what is left and what to do

    @property
    def ok(self) -> bool:
        return not self.unresolved


def _pipeline_of(wh: Warehouse, run_id: str) -> Any:
    """The run's pipeline config from the catalog (its warehouse set to this one), or None."""
    from factory.config import ConfigError, parse_pipeline

    with wh.connect(read_only=True) as con:
        row = con.execute("SELECT config FROM runs WHERE run_id = ?", [run_id]).fetchone()
    if not row or not row[0]:
        return None
    try:
        cfg = parse_pipeline(json.loads(row[0]), f"run {run_id}")
    except (ConfigError, ValueError):
        return None  # an eval or evolve run: not a pipeline
    cfg.warehouse = wh.root
    return cfg


def repair(wh: Warehouse, log: Callable[[str], None] = lambda _m: None) -> RepairResult:
    """Quarantine damaged run files and re-make their stages; restore release files that can be re-made."""
    from factory.runner import Runner

    result = RepairResult()
    sweep_temporaries(wh.root)
    diagnosis = diagnose(wh)
    run_damage = [d for d in diagnosis.damaged if d.release is None]
    for run_id in sorted({d.run_id for d in run_damage if d.run_id}):
        stages = sorted({d.stage for d in run_damage if d.run_id == run_id and d.stage})
        try:
            with run_lock(wh, run_id):  # not under a process that is running this run right now
                moved = quarantine_files(wh, [d for d in run_damage if d.run_id == run_id])
        except RunBusy as exc:
            result.unresolved.append(f"{str(exc).split(';')[0]}: run `factory repair` again once it has ended")
            continue
        result.quarantined.update(moved)
        for path, where in moved.items():
            log(f"quarantined {path}" + (f" -> {where.relative_to(wh.root)}" if where else " (it was missing)"))
        cfg = _pipeline_of(wh, run_id)
        if cfg is None:
            result.unresolved.append(f"run {run_id} was not made by a pipeline: run the command that made it again "
                                     f"to re-make {', '.join(stages)}")
            continue
        log(f"run {run_id}: making {', '.join(stages)} again")
        try:
            Runner(cfg, run_id, show_progress=False).run()
        except Exception as exc:  # noqa: BLE001 - reported as one line; the files stay quarantined
            result.unresolved.append(f"run {run_id}: re-making {', '.join(stages)} failed: {type(exc).__name__}: "
                                     f"{str(exc).splitlines()[0] if str(exc) else ''}")
            continue
        result.rerun[run_id] = stages
    by_release: dict[str, list[Damage]] = {}
    for d in diagnosis.damaged:
        if d.release is not None:
            by_release.setdefault(d.release, []).append(d)
    for ref, damage in sorted(by_release.items()):
        _repair_release(wh, ref, damage, result, log)
    return result


def _publishing_spec(wh: Warehouse, manifest: dict[str, Any], ref: str) -> tuple[Any, list[str] | None]:
    """The ReleaseSpec and stage list a pipeline's publish stage used for ``ref`` (default spec otherwise)."""
    from factory.releases import ReleaseSpec

    for run_id in manifest.get("run_ids", []):
        cfg = _pipeline_of(wh, run_id)
        if cfg is None:
            continue
        with wh.connect(read_only=True) as con:
            rows = con.execute("SELECT stage, metrics FROM stages WHERE run_id = ? AND kind = 'publish'",
                               [run_id]).fetchall()
        names = [s.stage_name for s in cfg.stages]
        for stage, metrics in rows:
            if json.loads(metrics or "{}").get("release") == ref and stage in names:
                stage_cfg = cfg.stages[names.index(stage)]
                spec = ReleaseSpec(**stage_cfg.model_dump(include=set(ReleaseSpec.model_fields)))
                return spec, names[:names.index(stage)]
    return ReleaseSpec(), None


def _repair_release(wh: Warehouse, ref: str, damage: list[Damage], result: RepairResult,
                    log: Callable[[str], None]) -> None:
    """Put back release files whose re-made bytes match the manifest; move unexpected files away."""
    from factory.releases import (
        ReleaseError,
        gather,
        load_manifest,
        parse_ref,
        releases_root,
        render_card,
        write_config,
    )

    name, version = parse_ref(ref)
    folder = releases_root(wh) / name / version
    how = (f"restore releases/{name}/{version} from a copy (the Hub: `factory push` uploaded it) or publish the "
           "runs again as a new version")
    try:
        manifest = load_manifest(folder)
    except ReleaseError:
        result.unresolved.append(f"release {ref}: manifest.json is damaged: {how}")
        return
    todo = []
    for d in damage:
        rel = str((wh.root / d.path).relative_to(folder))
        if d.problem.startswith("unexpected file"):
            target = quarantine_path(wh, d.path)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.move(wh.root / d.path, target)
            result.quarantined[d.path] = target
            log(f"quarantined {d.path} -> {target.relative_to(wh.root)}")
        else:
            todo.append(rel)
    if not todo:
        return
    want = {f["path"]: f["sha256"] for f in manifest["files"]}
    spec, stages = _publishing_spec(wh, manifest, ref)
    with FileLock(str(folder.parent / ".lock")), \
            tempfile.TemporaryDirectory(dir=folder.parent, prefix=".tmp-repair-") as tmp_name:  # as publish does
        tmp = Path(tmp_name)
        try:
            g = gather(wh, manifest["run_ids"], spec, stages)
            configs = {}
            for config, df in g.configs.items():
                files, schema, nbytes = write_config(df, tmp, config)
                configs[config] = {"rows": df.height, "paths": [f.path for f in files], "schema": schema,
                                   "num_bytes": nbytes, "download_size": sum(f.bytes for f in files)}
            if "README.md" in todo:
                (tmp / "README.md").write_text(render_card(name, version, spec, g, configs, manifest["parents"]),
                                               encoding="utf-8")
        except ReleaseError as exc:
            result.unresolved.append(f"release {ref}: cannot re-make it ({exc}): {how}")
            return
        for rel in todo:
            made = tmp / rel
            if made.is_file() and sha256_file(made) == want.get(rel):
                staged = folder / f".{Path(rel).name}.repair-{os.getpid()}"
                shutil.copyfile(made, staged)
                os.replace(staged, folder / rel)  # the very bytes manifest.json promises
                result.restored.append(f"releases/{name}/{version}/{rel}")
                log(f"restored releases/{name}/{version}/{rel} (re-made, sha256 matches manifest.json)")
            else:
                result.unresolved.append(f"release {ref}: {rel} cannot be re-made with the same bytes: {how}")


def repair_cache(wh: Warehouse) -> str:
    """Check ``cache/calls.sqlite``; a damaged one goes to ``quarantine/`` (its calls are made again on the
    next run: the cache is a saving, never the only copy of a record, which live in the run files)."""
    import sqlite3

    path = wh.root / "cache" / "calls.sqlite"
    if not path.exists():
        return f"no call cache at {path}: nothing to check"
    try:
        with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as con:
            verdict = con.execute("PRAGMA integrity_check").fetchone()[0]
    except sqlite3.DatabaseError as exc:
        verdict = str(exc)
    if verdict == "ok":
        return f"call cache {path}: ok"
    target = quarantine_path(wh, "cache/calls.sqlite")
    target.parent.mkdir(parents=True, exist_ok=True)
    for suffix in ("", "-wal", "-shm"):  # the WAL belongs to the damaged file; a new cache starts clean
        part = path.with_name(path.name + suffix)
        if part.exists():
            shutil.move(part, target.with_name(target.name + suffix))
    return f"call cache {path} was damaged ({verdict}); moved to {target}; the next run makes its calls again"
