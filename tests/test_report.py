"""`factory report`: the numbers on the page equal the warehouse's, absent sections say so, and the page
draws in headless Chromium without console errors, on a synthetic demo-shaped run and on a real one."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

import polars as pl
import pytest
import yaml
from typer.testing import CliRunner

from factory.report import ReportError, gather, resolve, write_report
from factory.report.synthetic import make_run
from factory.warehouse import StageStats, Warehouse
from tests.conftest import DEMO_SEEDS, ROOT, write_jsonl

VOID = {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source", "track", "wbr"}


class Page(HTMLParser):
    """What a test checks in a report: funnel rows, headline values, plots and the marks in their SVG."""

    def __init__(self, html: str):
        super().__init__()
        self.stack: list[tuple[str, dict[str, str]]] = []
        self.funnel: dict[tuple[str, str], dict[str, int]] = {}
        self.kpis: dict[str, str] = {}
        self.plots: dict[str, dict[str, int]] = {}  # plot id -> svg count, marks
        self.browser_rows = 0
        self.absent: list[str] = []
        self._row: tuple[str, str] | None = None
        self._text: list[str] | None = None
        self.feed(html)

    def _inside(self, pred) -> dict[str, str] | None:
        for _, attrs in reversed(self.stack):
            if pred(attrs):
                return attrs
        return None

    def handle_starttag(self, tag: str, attrs_list) -> None:
        attrs = {k: v or "" for k, v in attrs_list}
        classes = attrs.get("class", "").split()
        if tag == "tr" and "data-stage" in attrs:
            self._row = (attrs["data-run"], attrs["data-stage"])
            self.funnel[self._row] = {}
        if tag == "td" and self._row and attrs.get("data-col"):
            self.funnel[self._row][attrs["data-col"]] = int(attrs["data-value"])
        if tag == "div" and "kpi" in classes:
            self.kpis[attrs["id"].removeprefix("kpi-")] = attrs["data-value"]
        if tag == "div" and "plot" in classes:
            self.plots[attrs["id"]] = {"svg": 0, "marks": 0}
        plot = self._inside(lambda a: "plot" in a.get("class", "").split() and a.get("id") in self.plots)
        if plot is not None:
            if tag == "svg" and "main-svg" in classes:
                self.plots[plot["id"]]["svg"] += 1
            in_trace = self._inside(lambda a: "trace" in a.get("class", "").split()) or "trace" in classes
            if tag == "path" and in_trace and re.search(r"[0-9]", attrs.get("d", "")):
                self.plots[plot["id"]]["marks"] += 1
        if tag == "tr" and self._inside(lambda a: a.get("id") == "browser") and \
                any(t == "tbody" for t, _ in self.stack):
            self.browser_rows += 1
        if tag == "p" and "absent" in classes:
            self._text = []
        if tag not in VOID:
            self.stack.append((tag, attrs))

    def handle_endtag(self, tag: str) -> None:
        if tag == "tr":
            self._row = None
        if tag == "p" and self._text is not None:
            self.absent.append("".join(self._text))
            self._text = None
        while self.stack:
            if self.stack.pop()[0] == tag:
                break

    def handle_data(self, data: str) -> None:
        if self._text is not None:
            self._text.append(data)


def warehouse_funnel(wh: Warehouse, run_ids: list[str]) -> dict[tuple[str, str], dict[str, int]]:
    rows = wh.query("SELECT run_id, stage, records_in, records_out, records_rejected FROM stages "
                    "WHERE list_contains(?, run_id)", [run_ids])
    return {(r["run_id"], r["stage"]): {k: r[k] for k in ("records_in", "records_out", "records_rejected")}
            for r in rows.iter_rows(named=True)}


def kept_samples(wh: Warehouse, run_ids: list[str]) -> int:
    return wh.query("SELECT count(*) FROM samples_kept WHERE list_contains(?, run_id)", [run_ids]).item()


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory) -> tuple[Warehouse, str]:
    wh = Warehouse(tmp_path_factory.mktemp("report") / "wh")
    return wh, make_run(wh, 600)


def test_numbers_on_the_page_are_the_warehouse_numbers(synthetic, tmp_path):
    wh, run_id = synthetic
    page = Page(write_report(wh, tmp_path / "r.html").read_text())
    assert page.funnel == warehouse_funnel(wh, [run_id])
    assert int(page.kpis["kept-samples"]) == kept_samples(wh, [run_id]) > 0
    rejects = wh.query("SELECT count(*) FROM rejects WHERE run_id = ?", [run_id]).item()
    assert int(page.kpis["rejects"]) == rejects
    # every section of a demo-shaped run has data: only the evolve section (not an evolve run) is absent
    assert page.absent == ["Not an evolve run: per-round results appear in reports of factory report --evolve NAME."]
    assert set(page.plots) == {"fig-funnel", "fig-rejects", "fig-usage", "fig-features", "fig-flags",
                               "fig-calibration", "fig-judge-scores"}


def test_the_sample_browser_is_capped_and_says_of_how_many(synthetic, tmp_path):
    wh, run_id = synthetic
    html = write_report(wh, tmp_path / "r.html", browser_rows=50).read_text()
    records = json.loads(re.search(r'<script type="application/json" id="report-records">(.*?)</script>', html,
                                   re.S).group(1))
    assert len(records["rows"]) == 50
    stored = wh.query("""SELECT (SELECT count(*) FROM tasks WHERE run_id = $r) + (SELECT count(*) FROM samples
        WHERE run_id = $r) + (SELECT count(*) FROM rejects j WHERE run_id = $r AND NOT EXISTS (
            SELECT 1 FROM samples s WHERE s.sample_id = j.record_id AND s.run_id = j.run_id)
        AND NOT EXISTS (SELECT 1 FROM tasks t WHERE t.task_id = j.record_id AND t.run_id = j.run_id))""",
                      {"r": run_id}).item()
    assert f'data-shown="50" data-total="{stored}"' in html
    assert f"A sample of 50 of the {stored:,} records" in html
    # lineage travels with each row
    row = dict(zip(records["columns"], next(r for r in records["rows"] if r[0] == "sample"), strict=True))
    assert row["parent_ids"] and row["producer"] == "synthetic-model" and row["template_id"]


def test_a_run_without_judge_dedup_or_scores_says_so_in_one_line_each(tmp_path):
    wh = Warehouse(tmp_path / "wh")
    wh.begin_run("tiny", "tiny", "{}", "h", 0)
    tasks = pl.DataFrame({"task_id": ["a" * 16], "instruction": ["Say hi."], "category": ["open_qa"],
                          "source": ["seed"], "run_id": ["tiny"], "stage": ["seeds"], "round": [0],
                          "producer": ["human"], "parent_ids": [[]]})
    wh.commit_stage("tiny", "seeds", {"tasks": tasks}, StageStats("seeds", 0, 1, 1, 0))
    wh.finish_run("tiny", "done")
    page = Page(write_report(wh, tmp_path / "r.html").read_text())
    assert page.funnel == {("tiny", "seeds"): {"records_in": 1, "records_out": 1, "records_rejected": 0}}
    assert [a.split(":")[0] for a in page.absent] == [
        "No kept samples", "No score stage in these runs", "No judge stage in these runs",
        "No dedup stage in these runs", "Not an evolve run"]
    assert set(page.plots) == {"fig-funnel"}  # no empty charts


def test_record_text_cannot_escape_its_script_block(tmp_path):
    wh = Warehouse(tmp_path / "wh")
    run_id = make_run(wh, 20)
    evil = "</script><script>document.title='pwned'</script><!--"
    samples = wh.read("samples", run_id).with_columns(output=pl.lit(evil))
    wh.commit_stage(run_id, "self_label", {"samples": samples, "rejects": wh.read("rejects", run_id, ["self_label"])},
                    StageStats("self_label", 2, 10, samples.height, 1))
    html = write_report(wh, tmp_path / "r.html").read_text()
    assert html.count("</script>") == 4  # figures, records, plotly.js, the page's script: nothing else closes one
    assert "pwned" in html and "<script>document.title" not in html


def test_a_release_report_covers_its_runs_and_shows_its_rows(tmp_path):
    from factory import releases

    wh = Warehouse(tmp_path / "wh")
    run_id = make_run(wh, 60)
    published = releases.publish(wh, "syn", [run_id], releases.ReleaseSpec(version="1.0.0"))
    assert resolve(wh, release="syn@latest").run_ids == [run_id]
    page = Page(write_report(wh, tmp_path / "r.html", release="syn@1.0.0").read_text())
    assert int(page.kpis["release-sft"]) == published.rows["sft"] > 0
    assert int(page.kpis["kept-samples"]) == kept_samples(wh, [run_id])
    assert page.funnel == warehouse_funnel(wh, [run_id])


def test_scope_errors_are_one_line(synthetic, tmp_path):
    wh, run_id = synthetic
    for kwargs, expected in [({"run_id": "nope"}, "no run 'nope'"), ({"evolve": "nope"}, "no evolve run named"),
                             ({"release": "nope@1.0.0"}, "no release named 'nope'"),
                             ({"run_id": run_id, "evolve": "x"}, "give one of")]:
        with pytest.raises(ReportError, match=expected) as info:
            resolve(wh, **kwargs)
        assert "\n" not in str(info.value)
    with pytest.raises(ReportError, match="no warehouse at"):
        resolve(Warehouse(tmp_path / "none"))


def test_cli_writes_the_latest_run_by_default(synthetic, tmp_path):
    from factory.cli import app

    wh, run_id = synthetic
    res = CliRunner().invoke(app, ["report", "-w", str(wh.root)])
    assert res.exit_code == 0, res.output
    path = wh.root / "reports" / f"{run_id}.html"
    assert f"report: {path}" in res.output and path.is_file()
    bad = CliRunner().invoke(app, ["report", "missing-run", "-w", str(wh.root)])
    assert bad.exit_code == 1 and "error: no run 'missing-run'" in bad.output


def _evolve_warehouse(root: Path) -> tuple[Warehouse, str]:
    """Two rounds recorded as factory evolve records them, over two synthetic generation runs."""
    wh = Warehouse(root)
    evolve_id = "evolve-toy-0123456789"
    wh.begin_run(evolve_id, "evolve:toy", "{}", "h", 0)
    for r in range(2):
        run_id = make_run(wh, 40 + 10 * r, run_id=f"toy-r{r}-abc", seed=r)
        row = {"evolve_id": evolve_id, "pipeline": "toy", "round": r, "model_in": f"m{r}", "model_out": f"m{r + 1}",
               "start_model": "m0", "run_id": run_id, "release": f"toy-evolve@{r + 1}.0.0", "train_method": "sft",
               "method_mix": json.dumps({"sft:self_instruct": 30 + r, "preference:best-vs-worst": 4 * r}),
               "sft_rows": 30 + r, "preference_rows": 4 * r, "first_loss": 1.2, "final_loss": 0.9, "generate_s": 1.0,
               "train_s": 2.0, "eval_s": 3.0, "wall_s": 6.0, "generate_tokens": 10, "eval_tokens": 5,
               "gain_significant": r == 0, "nll_significantly_worse": False}
        evals = pl.DataFrame({
            "evolve_id": [evolve_id] * 2, "round": [r, r], "suite": ["arithmetic", "nll"],
            "metric": ["accuracy", "nll_per_token"], "n": [50, 20], "model_in_value": [0.2 + 0.1 * r, 2.5 - 0.1 * r],
            "model_out_value": [0.3 + 0.05 * r, 2.4 - 0.05 * r], "diff": [0.1 - 0.05 * r, -0.1 + 0.05 * r],
            "diff_ci_low": [0.02, -0.2], "diff_ci_high": [0.18, 0.01], "p_mcnemar": [0.03, None],
            "significant": [r == 0, False], "model_out_ci_low": [0.2, 2.3], "model_out_ci_high": [0.45, 2.5]})
        wh.commit_stage(evolve_id, f"round-{r}", {"rounds": pl.DataFrame([row]), "round_evals": evals},
                        StageStats("evolve:round", r, 1, 1, 0))
    wh.finish_run(evolve_id, "done")
    return wh, evolve_id


def test_an_evolve_report_covers_its_rounds(tmp_path):
    wh, evolve_id = _evolve_warehouse(tmp_path / "wh")
    assert resolve(wh).evolve_id == evolve_id  # the latest top-level run: the evolve run, not a round's run
    scope = resolve(wh, evolve="toy")
    assert scope.run_ids == ["toy-r0-abc", "toy-r1-abc"]
    page = Page(write_report(wh, tmp_path / "r.html", evolve="toy").read_text())
    assert page.funnel == warehouse_funnel(wh, scope.run_ids)
    assert int(page.kpis["kept-samples"]) == kept_samples(wh, scope.run_ids)
    assert {"fig-evolve-accuracy", "fig-evolve-gain", "fig-method-mix"} <= set(page.plots)
    data = gather(wh, scope)
    assert data.round_evals.height == 4 and data.rounds["round"].to_list() == [0, 1]


# -- in headless Chromium -------------------------------------------------------------------------------


def chromium_or_skip() -> None:
    from factory.report import chromium

    try:
        chromium.find()
    except chromium.ChromiumMissing as exc:
        pytest.skip(f"{exc}: the browser checks need it (`make chromium` installs it as root)")


def check_in_chromium(html_path: Path, wh: Warehouse, run_ids: list[str], png: Path) -> Page:
    """The page drew every plot, raised no console error, and shows the warehouse's numbers."""
    from factory.report import chromium

    rendered = chromium.render(html_path)
    assert rendered.errors == [] and rendered.stderr_errors == []
    assert rendered.ready_ms is not None  # the page's own script ran to the end
    page = Page(rendered.dom)
    assert page.plots, "no plot on the page"
    for plot_id, drawn in page.plots.items():
        assert drawn["svg"] >= 1 and drawn["marks"] >= 1, f"{plot_id} drew nothing: {drawn}"
    assert page.funnel == warehouse_funnel(wh, run_ids)
    assert int(page.kpis["kept-samples"]) == kept_samples(wh, run_ids)
    assert page.browser_rows > 0  # the records table was filled by the script
    chromium.screenshot(html_path, png)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 20_000
    return page


#: clicks through the records browser: dropped records only, then a search, then a record's lineage
BROWSE = """
const root = document.getElementById("browser"), seen = {};
const status = root.querySelector("select[data-filter=status]");
status.value = "dropped"; status.dispatchEvent(new Event("change"));
const rows = [...root.querySelectorAll("tbody tr")];
seen.dropped_rows = rows.length; seen.all_dropped = rows.every((r) => r.className === "dropped");
seen.count = root.querySelector(".count").textContent;
status.value = ""; status.dispatchEvent(new Event("change"));
const search = root.querySelector("input[type=search]");
search.value = "variant 7."; search.dispatchEvent(new Event("input"));
seen.search_rows = root.querySelectorAll("tbody tr").length;
search.value = ""; search.dispatchEvent(new Event("input"));
const sample = [...root.querySelectorAll("tbody tr")].find((r) => r.className === "kept" &&
  r.children[1].textContent === "sample");
sample.click();
seen.detail = root.querySelector(".detail h3").textContent;
seen.parent_links = root.querySelectorAll(".detail a.id, .detail span.id").length;
document.documentElement.setAttribute("data-browse", JSON.stringify(seen));
"""


@pytest.mark.slow
def test_the_records_browser_filters_searches_and_shows_lineage(synthetic, tmp_path):
    from html import unescape

    from factory.report import chromium

    chromium_or_skip()
    wh, _ = synthetic
    rendered = chromium.render(write_report(wh, tmp_path / "r.html"), after_load=BROWSE)
    assert rendered.errors == []
    seen = json.loads(unescape(re.search(r'data-browse="([^"]*)"', rendered.dom).group(1)))
    assert seen["dropped_rows"] > 0 and seen["all_dropped"], seen
    assert re.match(r"\d+ matching of \d+ sampled records", seen["count"]), seen
    assert seen["search_rows"] >= 1
    assert seen["detail"].startswith("sample ") and seen["detail"].endswith("kept")
    assert seen["parent_links"] >= 1  # its task, as a link (or its id, when not in the sample)


@pytest.mark.slow
def test_synthetic_and_evolve_reports_draw_in_headless_chromium(synthetic, tmp_path):
    chromium_or_skip()
    wh, run_id = synthetic
    check_in_chromium(write_report(wh, tmp_path / "run.html"), wh, [run_id], tmp_path / "run.png")
    ev_wh, _ = _evolve_warehouse(tmp_path / "ev")
    page = check_in_chromium(write_report(ev_wh, tmp_path / "ev.html", evolve="toy"), ev_wh,
                             ["toy-r0-abc", "toy-r1-abc"], tmp_path / "ev.png")
    assert "fig-evolve-accuracy" in page.plots


@pytest.mark.slow
def test_a_real_run_prints_its_report_which_draws_in_headless_chromium(tmp_path):
    """A tiny demo-shaped run on the embedded model, through the CLI: its summary names the report."""
    chromium_or_skip()
    rows = [json.loads(line) for line in DEMO_SEEDS.read_text().splitlines()]
    per_cat: dict[str, list[dict]] = {}
    for row in rows:
        per_cat.setdefault(row["category"], []).append(row)
    seeds = write_jsonl(tmp_path / "seeds.jsonl", [r for cat in per_cat.values() for r in cat[:2]])
    pipeline = {
        "name": "report-mini", "warehouse": str(tmp_path / "wh"), "seed": 3,
        "backend": {"kind": "transformers", "batch_size": 8},
        "stages": [
            {"kind": "seeds", "paths": [str(seeds)]},
            {"kind": "self_instruct", "target_tasks": 3, "max_calls": 4, "prompts_per_batch": 4,
             "params": {"max_tokens": 80}},
            {"kind": "self_label", "n": 2, "sources": ["self_instruct"], "keep_truncated": True,
             "params": {"max_tokens": 40}},
            {"kind": "judge", "k": 1, "calibration_size": 3, "max_samples": 4, "params": {"max_tokens": 40}},
            {"kind": "dedup", "methods": ["exact", "near"], "max_drop_fraction": 1.0},
            {"kind": "score"},
        ]}
    path = tmp_path / "mini.yaml"
    path.write_text(yaml.safe_dump(pipeline))
    proc = subprocess.run([sys.executable, "-m", "factory.cli", "run", str(path), "-q"], capture_output=True,
                          text=True, cwd=ROOT, timeout=900)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    wh = Warehouse(tmp_path / "wh")
    run_id = wh.query("SELECT run_id FROM runs").item()
    report = wh.root / "reports" / f"{run_id}.html"
    assert f"report: {report}" in proc.stdout and report.is_file()
    page = check_in_chromium(report, wh, [run_id], tmp_path / "report.png")
    assert {"fig-funnel", "fig-usage", "fig-calibration", "fig-features"} <= set(page.plots)
    assert wh.query("SELECT sum(calls) FROM stages WHERE run_id = ?", [run_id]).item() > 0  # a real model answered
