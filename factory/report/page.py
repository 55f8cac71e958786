"""The report as one self-contained HTML page: CSS, plotly.js, figures and records all inline.

Numbers a reader (or a test) checks against the warehouse carry ``data-*`` attributes: each funnel row
names its run and stage, each count cell its column, each headline figure its value.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from html import escape
from importlib import resources
from typing import Any

import plotly.io as pio
from plotly.offline import get_plotlyjs

from factory.report import figures as figs
from factory.report.gather import ReportData

Cell = str | int | float | bool | None


def _asset(name: str) -> str:
    return resources.files("factory.report").joinpath("assets", name).read_text(encoding="utf-8")


def _script_json(value: Any) -> str:
    """JSON safe inside a <script> element (no "</script>" or "<!--" can close or confuse it)."""
    return json.dumps(value, ensure_ascii=False, default=str).replace("<", "\\u003c")


def _fmt(value: Cell, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        return f"{value:,.{digits}f}".rstrip("0").rstrip(".") if abs(value) < 1e6 else f"{value:,.0f}"
    return str(value)


def _pct(value: float | None) -> str:
    return "" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{100 * value:.1f}%"


def table(headers: Sequence[str], rows: Iterable[Sequence[Cell]], numeric: Sequence[bool] | None = None,
          row_attrs: Iterable[dict[str, str]] | None = None, col_keys: Sequence[str] | None = None,
          table_id: str | None = None) -> str:
    """An HTML table; numbers right-aligned, cells carry ``data-col`` when ``col_keys`` are given."""
    numeric = numeric or [False] * len(headers)
    attrs_list = list(row_attrs) if row_attrs is not None else None
    head = "".join(f'<th class="num">{escape(h)}</th>' if n else f"<th>{escape(h)}</th>"
                   for h, n in zip(headers, numeric, strict=True))
    body = []
    for i, row in enumerate(rows):
        attrs = "".join(f' {k}="{escape(v)}"' for k, v in (attrs_list[i] if attrs_list else {}).items())
        cells = []
        for j, value in enumerate(row):
            cls = ' class="num"' if numeric[j] else ""
            key = f' data-col="{escape(col_keys[j])}"' if col_keys and col_keys[j] else ""
            raw = f' data-value="{escape(str(value))}"' if key and isinstance(value, int | float) else ""
            cells.append(f"<td{cls}{key}{raw}>{escape(_fmt(value))}</td>")
        body.append(f"<tr{attrs}>{''.join(cells)}</tr>")
    tid = f' id="{table_id}"' if table_id else ""
    return f'<table class="data"{tid}><thead><tr>{head}</tr></thead><tbody>{"".join(body)}</tbody></table>'


def kpi(key: str, value: int | float, label: str) -> str:
    return (f'<div class="kpi" id="kpi-{escape(key)}" data-value="{value}"><b>{escape(_fmt(value))}</b>'
            f"<span>{escape(label)}</span></div>")


class Page:
    """Collects sections and the figures they place, then writes the page."""

    def __init__(self, data: ReportData):
        self.data = data
        self.figures: dict[str, Any] = {}
        self.sections: list[str] = []

    def figure(self, name: str, fig: Any) -> str:
        if fig is None:
            return ""
        fid = f"fig-{name}"
        self.figures[fid] = json.loads(pio.to_json(fig, validate=False))
        return f'<div class="plot" id="{fid}" data-figure="{escape(name)}"></div>'

    def section(self, sid: str, title: str, body: str) -> None:
        self.sections.append(f'<section id="{sid}"><h2>{escape(title)}</h2>{body}</section>')

    def html(self, title: str, subtitle: str) -> str:
        rows = self.data.browser_rows
        records = {"columns": rows.columns, "rows": rows.rows()} if rows.height else {"columns": [], "rows": []}
        return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{escape(title)}</title>
<style>{_asset("report.css")}</style>
</head><body>
<header><h1>{escape(title)}</h1><p>{escape(subtitle)}</p></header>
<main>{"".join(self.sections)}</main>
<footer>made by <code>factory report</code> · one self-contained file: plotly.js, figures and records are inline
</footer>
<script type="application/json" id="report-figures">{_script_json(self.figures)}</script>
<script type="application/json" id="report-records">{_script_json(records)}</script>
<script>{get_plotlyjs()}</script>
<script>{_asset("report.js")}</script>
</body></html>
"""


def _reasons_by_stage(data: ReportData) -> dict[tuple[str, str], str]:
    out: dict[tuple[str, str], str] = {}
    for (run_id, stage), part in data.reject_reasons.group_by("run_id", "stage", maintain_order=True):
        out[(run_id, stage)] = ", ".join(f"{r} {n:,}" for r, n in part.select("reason", "n").iter_rows())
    return out


def funnel_section(page: Page) -> None:
    d = page.data
    if d.stages.is_empty():
        page.section("funnel", "Funnel", '<p class="absent">No stage of these runs has finished: no funnel.</p>')
        return
    kpis = [kpi("kept-samples", d.kept["samples"], "kept samples"), kpi("kept-tasks", d.kept["tasks"], "kept tasks")]
    if d.kept["pairs"]:
        kpis.append(kpi("kept-pairs", d.kept["pairs"], "kept preference pairs"))
    kpis.append(kpi("rejects", int(d.reject_reasons["n"].sum()) if d.reject_reasons.height else 0, "rejects"))
    for config, n in d.release_rows.items():
        kpis.append(kpi(f"release-{config}", n, f"release {config} rows"))
    reasons = _reasons_by_stage(d)
    many = d.stages["run_id"].n_unique() > 1
    headers = (["run"] if many else []) + ["stage", "kind", "status", "in", "out", "rejected", "reject reasons"]
    keys = ([""] if many else []) + ["", "", "", "records_in", "records_out", "records_rejected", ""]
    rows = [([r["run_id"]] if many else []) + [r["stage"], r["kind"], r["status"], r["records_in"], r["records_out"],
                                               r["records_rejected"], reasons.get((r["run_id"], r["stage"]), "")]
            for r in d.stages.iter_rows(named=True)]
    attrs = [{"data-run": r["run_id"], "data-stage": r["stage"]} for r in d.stages.iter_rows(named=True)]
    numeric = [False] * (len(headers) - 4) + [True, True, True, False]
    note = ('<p class="note">Kept = records no stage of their run rejected (the <code>*_kept</code> views). '
            "A judge stage's out counts judgments.</p>")
    page.section("funnel", "Funnel", f'<div class="kpis">{"".join(kpis)}</div>{note}'
                 + page.figure("funnel", figs.funnel(d)) + page.figure("rejects", figs.reject_reasons(d))
                 + table(headers, rows, numeric, attrs, keys, table_id="funnel-table"))


def usage_section(page: Page, usd_per_mtok: float | None) -> None:
    d = page.data
    st = d.stages
    if st.is_empty():
        page.section("usage", "Tokens, calls and cost", '<p class="absent">No stages: no usage to show.</p>')
        return
    rows = []
    for r in st.iter_rows(named=True):
        tps = json.loads(r["metrics"] or "{}").get("tokens_per_second")
        rows.append([figs.stage_label(d, r["run_id"], r["stage"]), r["calls"], r["cached_calls"],
                     _pct(r["cached_calls"] / r["calls"]) if r["calls"] else "", r["prompt_tokens"],
                     r["completion_tokens"], round(r["seconds"], 1), tps])
    calls, cached = int(st["calls"].sum()), int(st["cached_calls"].sum())
    tokens = int(st["prompt_tokens"].sum() + st["completion_tokens"].sum())
    seconds = float(st["seconds"].sum())
    rows.append(["total", calls, cached, _pct(cached / calls) if calls else "", int(st["prompt_tokens"].sum()),
                 int(st["completion_tokens"].sum()), round(seconds, 1), None])
    kept = d.kept["samples"]
    per = []
    if kept:
        per = [kpi("tokens-per-kept", round(tokens / kept, 1), "tokens per kept sample"),
               kpi("calls-per-kept", round(calls / kept, 2), "model calls per kept sample"),
               kpi("seconds-per-kept", round(seconds / kept, 2), "seconds per kept sample")]
        if usd_per_mtok is not None:
            per.append(kpi("usd-per-kept", round(tokens / kept * usd_per_mtok / 1e6, 6),
                           f"USD per kept sample at ${usd_per_mtok:g} per 1M tokens"))
    note = ("" if kept else '<p class="absent">No kept samples: no cost per accepted record.</p>')
    cost_note = ('<p class="note">Cost is counted in tokens, model calls and seconds; pass '
                 "<code>--usd-per-mtok</code> for a price.</p>" if usd_per_mtok is None and kept else "")
    page.section("usage", "Tokens, calls and cost", f'<div class="kpis">{"".join(per)}</div>{note}{cost_note}'
                 + page.figure("usage", figs.usage(d))
                 + table(["stage", "calls", "cache hits", "hit rate", "prompt tokens", "completion tokens",
                          "seconds", "tokens/s"], rows, [False, True, True, True, True, True, True, True],
                         table_id="usage-table"))


def scores_section(page: Page) -> None:
    d = page.data
    if d.feature_bins.is_empty() and d.flag_shares.is_empty():
        page.section("scores", "Scores: kept vs dropped", '<p class="absent">No score stage in these runs: no score '
                     "or feature distributions.</p>")
        return
    note = ('<p class="note">Samples the score stage saw, split by its decision; earlier drops (dedup, '
            "self-label) are not in these charts.</p>")
    page.section("scores", "Scores: kept vs dropped", note + page.figure("features", figs.features(d))
                 + page.figure("flags", figs.flags(d)))


def judge_section(page: Page) -> None:
    d = page.data
    if not d.judge_stages:
        page.section("judge", "Judge", '<p class="absent">No judge stage in these runs: no calibration to show.</p>')
        return
    rows, warnings = [], []
    for m in d.judge_stages:
        rows.append([figs.stage_label(d, m["run_id"], m["stage"]), m.get("calibration_accuracy"),
                     m.get("calibration_pairs"), m.get("calibration_passed"), m.get("trusted"),
                     _pct(m.get("calibration_parse_failure_rate")), m.get("judgments"), m.get("parse_failures"),
                     _pct(m.get("parse_failure_rate")), m.get("judge_mean")])
        if m.get("calibration_passed") is False:
            warnings.append(f'<p class="bad">{escape(m["stage"])}: the judge ranks the good answer above its bad '
                            f"twin in {_pct(m.get('calibration_accuracy'))} of the calibration pairs — near chance"
                            + (", so its scores were ignored." if not m.get("trusted") else
                               ", and its scores were used anyway.") + "</p>")
    body = "".join(warnings) + table(
        ["stage", "calibration accuracy", "pairs", "passed", "trusted", "calibration parse failures", "judgments",
         "parse failures", "parse failure rate", "mean score"], rows,
        [False, True, True, False, False, True, True, True, True, True], table_id="judge-table")
    calib = page.figure("calibration", figs.calibration(d))
    body += calib or '<p class="absent">The judge ran without its calibration set.</p>'
    body += page.figure("judge-scores", figs.judge_scores(d))
    page.section("judge", "Judge", body)


def _member(row: dict[str, Any]) -> str:
    role = "keeper" if row["kept"] else "duplicate"
    sim = "" if row["kept"] else f" · similarity {row['similarity']:.3f}"
    return (f'<div class="member {role}"><span class="meta">{role} {escape(row["record_id"])}{sim}</span>'
            f'{escape(row["text"] or "(text not found)")}</div>')


def dedup_section(page: Page) -> None:
    d = page.data
    if d.clusters.is_empty():
        why = "no dedup stage in these runs" if d.cluster_totals.is_empty() else "no duplicates found"
        page.section("dedup", "Dedup clusters", f'<p class="absent">{why.capitalize()}: no clusters to show.</p>')
        return
    totals = table(["kind", "clusters", "dropped"], d.cluster_totals.rows(), [False, True, True])
    cards = []
    for (_, cid), part in d.clusters.group_by("run_id", "cluster_id", maintain_order=True):
        rows = part.to_dicts()
        keepers = "".join(_member(r) for r in rows if r["kept"])
        dups = "".join(_member(r) for r in rows if not r["kept"])
        question = rows[0]["instruction"]
        cards.append(f'<div class="cluster"><h3>{escape(rows[0]["kind"])} cluster {escape(cid)} · {len(rows)} records'
                     + (f" · task: {escape(question[:160])}" if question else "") + "</h3>"
                     f'<div class="pair"><div>{keepers}</div><div>{dups}</div></div></div>')
    shown = d.clusters.select("run_id", "cluster_id").unique().height
    page.section("dedup", "Dedup clusters", totals + f'<p class="note">The {shown} largest clusters: the record kept '
                 "on the left, its duplicates on the right with their similarity to it.</p>" + "".join(cards))


def evolve_section(page: Page) -> None:
    d = page.data
    if d.scope.kind != "evolve":
        page.section("evolve", "Evolution", '<p class="absent">Not an evolve run: per-round results appear in '
                     "reports of <code>factory report --evolve NAME</code>.</p>")
        return
    if d.rounds.is_empty():
        page.section("evolve", "Evolution", '<p class="absent">No round of this evolve run has finished yet.</p>')
        return
    rows = [[r["round"], r["model_in"], r["model_out"], r["release"], r["sft_rows"], r["preference_rows"],
             r.get("first_loss"), r.get("final_loss"), r["gain_significant"], r["generate_s"], r["train_s"],
             r["eval_s"]] for r in d.rounds.iter_rows(named=True)]
    body = table(["round", "model in", "model out", "release", "sft rows", "preference rows", "first loss",
                  "final loss", "significant gain", "generate s", "train s", "eval s"], rows,
                 [True, False, False, False, True, True, True, True, False, True, True, True], table_id="rounds-table")
    body += page.figure("evolve-accuracy", figs.evolve_accuracy(d)) or \
        '<p class="absent">No per-suite evals recorded for these rounds.</p>'
    body += page.figure("evolve-gain", figs.evolve_gain(d)) + page.figure("method-mix", figs.method_mix(d))
    if d.round_evals.height:
        body += table(["round", "suite", "metric", "n", "model in", "model out", "diff", "CI low", "CI high",
                       "significant"],
                      d.round_evals.select("round", "suite", "metric", "n", "model_in_value", "model_out_value", "diff",
                                           "diff_ci_low", "diff_ci_high", "significant").rows(),
                      [True, False, False, True, True, True, True, True, True, False])
    page.section("evolve", "Evolution", body)


def browser_section(page: Page) -> None:
    d = page.data
    shown, total = d.browser_rows.height, d.browser_total
    if not total:
        page.section("records", "Records", '<p class="absent">No records in these runs.</p>')
        return
    sample = (f'<p class="note" id="records-sample" data-shown="{shown}" data-total="{total}">A sample of '
              f"{shown:,} of the {total:,} records (chosen by a hash of their id, so the page stays fast); the counts "
              f"above are over all of them. Query the rest with <code>factory sql</code>.</p>" if shown < total else
              f'<p class="note" id="records-sample" data-shown="{shown}" data-total="{total}">All {total:,} records.'
              "</p>")
    body = (sample + '<div id="browser"><div class="filters"><input type="search" placeholder="search text or id">'
            '</div><div class="pager"><button class="prev">previous</button><button class="next">next</button>'
            '<span class="count"></span></div><table class="data"><thead><tr><th>status</th><th>kind</th>'
            "<th>stage</th><th>category</th><th>text</th><th>reason</th></tr></thead><tbody></tbody></table>"
            '<div class="detail"><p class="note">Click a record to see its text and lineage.</p></div></div>')
    page.section("records", "Records", body)


def runs_section(page: Page) -> None:
    d = page.data
    if d.runs.is_empty():
        page.section("runs", "Runs", '<p class="absent">No pipeline runs in this scope.</p>')
        return
    rows = [[r["run_id"], r["pipeline"], r["status"], r["round"], r["started_at"], r["finished_at"], r["error"]]
            for r in d.runs.iter_rows(named=True)]
    page.section("runs", "Runs", table(["run", "pipeline", "status", "round", "started", "finished", "error"], rows,
                                       [False, False, False, True, False, False, False]))


def render(data: ReportData, warehouse: str, usd_per_mtok: float | None = None) -> str:
    page = Page(data)
    runs_section(page)
    funnel_section(page)
    usage_section(page, usd_per_mtok)
    scores_section(page)
    judge_section(page)
    dedup_section(page)
    evolve_section(page)
    browser_section(page)
    when = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    return page.html(f"Dataset factory report — {data.scope.title}", f"warehouse {warehouse} · made {when}")
