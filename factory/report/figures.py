"""The report's plots, as plotly figures built from the gathered (already aggregated) frames.

Every builder returns ``None`` when its data is absent, so the page can say so instead of drawing an
empty chart. Only SVG trace types are used (no WebGL), so a headless browser draws them all and a test
can check that each plot's SVG holds its marks.
"""

from __future__ import annotations

import json
import math

import plotly.graph_objects as go
import polars as pl
from plotly.subplots import make_subplots

from factory.evaluation.stats import wilson
from factory.report.gather import BINS, ReportData

KEPT, DROPPED = "#2a9d8f", "#e76f51"
PALETTE = ["#264653", "#2a9d8f", "#e9c46a", "#f4a261", "#e76f51", "#8ab17d", "#6d597a", "#b56576", "#355070",
           "#90be6d", "#577590", "#f9844a"]
#: reasons shown apart in the reject chart; the rest are summed as "other"
TOP_REASONS = 11


def _layout(fig: go.Figure, height: int, **kw) -> go.Figure:
    fig.update_layout(template="plotly_white", height=height, margin={"l": 60, "r": 20, "t": 40, "b": 40},
                      legend={"orientation": "h", "y": -0.15, "traceorder": "normal"}, font={"size": 12}, **kw)
    return fig


def stage_label(data: ReportData, run_id: str, stage: str) -> str:
    """``stage`` alone for one run; ``stage (round r)`` or ``stage (run)`` when several runs are shown."""
    if len(data.scope.run_ids) <= 1:
        return stage
    if data.scope.kind == "evolve" and data.runs.height:
        rounds = dict(data.runs.select("run_id", "round").iter_rows())
        if run_id in rounds:
            return f"r{rounds[run_id]} {stage}"
    return f"{stage} ({run_id})"


def funnel(data: ReportData) -> go.Figure | None:
    if data.stages.is_empty():
        return None
    fig = go.Figure()
    for i, (run_id, rows) in enumerate(data.stages.group_by("run_id", maintain_order=True)):
        fig.add_trace(go.Funnel(name=str(run_id[0]), y=rows["stage"].to_list(), x=rows["records_out"].to_list(),
                                textinfo="value", marker={"color": PALETTE[i % len(PALETTE)]}))
    runs = data.stages["run_id"].n_unique()
    return _layout(fig, min(900, 100 + 40 * data.stages["stage"].n_unique() * runs), funnelmode="group",
                   title="records out of each stage", showlegend=runs > 1)


def reject_reasons(data: ReportData) -> go.Figure | None:
    df = data.reject_reasons
    if df.is_empty():
        return None
    top = df.group_by("reason").agg(pl.col("n").sum()).sort("n", "reason", descending=[True, False])
    keep = set(top["reason"].head(TOP_REASONS).to_list())
    labels = [stage_label(data, r, s) for r, s in df.select("run_id", "stage").iter_rows()]
    df = df.with_columns(reason=pl.when(pl.col("reason").is_in(list(keep))).then("reason").otherwise(pl.lit("other")),
                         label=pl.Series(labels, dtype=pl.String))
    df = df.group_by("label", "reason", maintain_order=True).agg(pl.col("n").sum())
    order = df["label"].unique(maintain_order=True).to_list()
    fig = go.Figure()
    reasons = [r for r in top["reason"].to_list() if r in keep] + (["other"] if "other" in df["reason"] else [])
    for i, reason in enumerate(reasons):
        part = df.filter(pl.col("reason") == reason)
        fig.add_trace(go.Bar(name=reason, orientation="h", y=part["label"].to_list(), x=part["n"].to_list(),
                             marker={"color": PALETTE[i % len(PALETTE)]}))
    fig.update_yaxes(categoryorder="array", categoryarray=list(reversed(order)))
    return _layout(fig, 120 + 34 * len(order), title="rejected records by stage and reason", barmode="stack")


def usage(data: ReportData) -> go.Figure | None:
    df = data.stages.filter((pl.col("calls") > 0) | (pl.col("prompt_tokens") + pl.col("completion_tokens") > 0))
    if df.is_empty():
        return None
    labels = [stage_label(data, r, s) for r, s in df.select("run_id", "stage").iter_rows()]
    fig = make_subplots(rows=1, cols=2, subplot_titles=("tokens", "model calls"))
    fig.add_trace(go.Bar(name="prompt tokens", x=labels, y=df["prompt_tokens"].to_list(), marker_color="#264653"), 1, 1)
    fig.add_trace(go.Bar(name="completion tokens", x=labels, y=df["completion_tokens"].to_list(),
                         marker_color="#e9c46a"), 1, 1)
    fig.add_trace(go.Bar(name="calls made", x=labels, y=(df["calls"] - df["cached_calls"]).to_list(),
                         marker_color="#577590"), 1, 2)
    fig.add_trace(go.Bar(name="served from cache", x=labels, y=df["cached_calls"].to_list(),
                         marker_color="#90be6d"), 1, 2)
    return _layout(fig, 340, barmode="stack")


def features(data: ReportData) -> go.Figure | None:
    """One small histogram per score feature: kept and dropped samples overlaid."""
    df = data.feature_bins
    if df.is_empty():
        return None
    names = df["feature"].unique(maintain_order=True).to_list()
    cols = 3
    rows = math.ceil(len(names) / cols)
    fig = make_subplots(rows=rows, cols=cols, subplot_titles=names, vertical_spacing=0.6 / rows,
                        horizontal_spacing=0.06)
    for i, name in enumerate(names):
        part = df.filter(pl.col("feature") == name)
        lo, hi = part["lo"][0], part["hi"][0]
        # one value only (every sample alike): one narrow bar at it, not a bin stretched over [lo, lo + 1]
        width = (hi - lo) / BINS if hi > lo else max(abs(lo), 1.0) / BINS
        for keep, color, label in ((True, KEPT, "kept"), (False, DROPPED, "dropped")):
            side = part.filter(pl.col("keep") == keep)
            if side.is_empty():
                continue
            x = [lo + (b + 0.5) * width for b in side["bin"].to_list()] if hi > lo else [lo] * side.height
            fig.add_trace(go.Bar(name=label, legendgroup=label, showlegend=i == 0, marker_color=color, opacity=0.75,
                                 x=x, y=side["n"].to_list(), width=width * 0.95), 1 + i // cols, 1 + i % cols)
        # the bins' span, not plotly's guess (it widens an axis around a trace of one bar)
        fig.update_xaxes(range=[lo - width, max(hi, lo) + width], row=1 + i // cols, col=1 + i % cols)
    fig.update_annotations(font_size=11)
    _layout(fig, 80 + 170 * rows, barmode="overlay", title="score features: kept vs dropped samples")
    fig.update_layout(margin={"t": 80})
    return fig


def flags(data: ReportData) -> go.Figure | None:
    df = data.flag_shares
    if df.is_empty():
        return None
    fig = go.Figure()
    for keep, color, label in ((True, KEPT, "kept"), (False, DROPPED, "dropped")):
        side = df.filter(pl.col("keep") == keep)
        if side.height:
            fig.add_trace(go.Bar(name=label, x=side["feature"].to_list(), y=side["share"].to_list(),
                                 marker_color=color, customdata=side["n"].to_list(),
                                 hovertemplate="%{x}: %{y:.0%} of %{customdata} " + label + "<extra></extra>"))
    fig.update_yaxes(tickformat=".0%", range=[0, 1])
    return _layout(fig, 300, barmode="group", title="flags: share of samples with each flag")


def calibration(data: ReportData) -> go.Figure | None:
    """The judge's scores of each calibration twin: the good answer should score above its corrupted twin."""
    df = data.calibration
    if df.is_empty():
        return None
    labels = [f"{c or '?'} {p[:6]}" + (f" ({stage_label(data, r, s)})" if len(data.judge_stages) > 1 else "")
              for r, s, p, c in df.select("run_id", "stage", "pair_id", "corruption").iter_rows()]
    fig = go.Figure([go.Bar(name=name, x=labels, y=df[col].to_list(), marker_color=color, text=df[col].to_list(),
                            texttemplate="%{text:.2g}", textposition="outside")
                     for name, col, color in (("good answer", "good", KEPT), ("corrupted twin", "bad", DROPPED))])
    top = max([v for v in [*df["good"].to_list(), *df["bad"].to_list()] if v is not None] + [5.0])
    fig.update_yaxes(range=[0, top * 1.15])  # the additive scale starts at 0: zero scores sit on the axis
    return _layout(fig, 320, barmode="group", title="calibration: judge score of each good answer and its bad twin")


def judge_scores(data: ReportData) -> go.Figure | None:
    df = data.judge_scores.filter(pl.col("score").is_not_null()) if data.judge_scores.height else data.judge_scores
    if df.is_empty():
        return None
    fig = go.Figure()
    for i, (kind, part) in enumerate(df.group_by("kind", maintain_order=True)):
        fig.add_trace(go.Bar(name=str(kind[0]), x=part["score"].to_list(), y=part["n"].to_list(),
                             marker_color=PALETTE[i % len(PALETTE)]))
    fig.update_xaxes(dtick=1)
    return _layout(fig, 300, barmode="group", title="judge scores (parsed judgments)")


def evolve_accuracy(data: ReportData) -> go.Figure | None:
    """Each suite's value for the base model and the model after each round, with its 95% CI as a band."""
    ev = data.round_evals
    if ev.is_empty():
        return None
    suites = ev["suite"].unique(maintain_order=True).to_list()
    titles = [f"{s} ({ev.filter(pl.col('suite') == s)['metric'][0]})" for s in suites]
    fig = make_subplots(rows=1, cols=len(suites), subplot_titles=titles)
    for i, suite in enumerate(suites):
        part = ev.filter(pl.col("suite") == suite).sort("round")
        first = part.row(0, named=True)
        base_lo, base_hi = first["model_in_value"], first["model_in_value"]
        if first["metric"] == "accuracy" and first["n"]:
            base_lo, base_hi = wilson(round(first["model_in_value"] * first["n"]), first["n"])
        x = ["base"] + [f"after r{r}" for r in part["round"].to_list()]
        y = [first["model_in_value"], *part["model_out_value"].to_list()]
        lo = [base_lo, *part["model_out_ci_low"].to_list()]
        hi = [base_hi, *part["model_out_ci_high"].to_list()]
        color = PALETTE[i % len(PALETTE)]
        fig.add_trace(go.Scatter(x=x + x[::-1], y=hi + lo[::-1], fill="toself", fillcolor=_rgba(color, 0.18),
                                 mode="lines", line={"width": 0}, hoverinfo="skip", name=f"{suite} 95% CI",
                                 showlegend=False),
                      1, i + 1)
        fig.add_trace(go.Scatter(x=x, y=y, mode="lines+markers", name=suite, line={"color": color}), 1, i + 1)
    _layout(fig, 360, title="held-out score per round (band: 95% CI)")
    fig.update_layout(margin={"t": 80})
    return fig


def evolve_gain(data: ReportData) -> go.Figure | None:
    """The paired difference model_out − model_in of each round and suite, with its bootstrap CI."""
    ev = data.round_evals
    if ev.is_empty():
        return None
    suites = ev["suite"].unique(maintain_order=True).to_list()
    fig = make_subplots(rows=1, cols=len(suites), subplot_titles=suites)
    for i, suite in enumerate(suites):
        part = ev.filter(pl.col("suite") == suite).sort("round")
        diff = part["diff"].to_list()
        fig.add_trace(go.Scatter(
            name=suite, x=[f"round {r}" for r in part["round"].to_list()], y=diff, mode="markers",
            marker={"size": 10, "color": PALETTE[i % len(PALETTE)]}, showlegend=False,
            error_y={"type": "data", "symmetric": False,
                     "array": [h - d for h, d in zip(part["diff_ci_high"].to_list(), diff, strict=True)],
                     "arrayminus": [d - lo for lo, d in zip(part["diff_ci_low"].to_list(), diff, strict=True)]}),
            1, i + 1)
        fig.add_hline(y=0, line_dash="dot", line_color="#888", row=1, col=i + 1)
    _layout(fig, 340, title="paired gain per round: model_out − model_in (95% CI)")
    fig.update_layout(margin={"t": 80})
    return fig


def method_mix(data: ReportData) -> go.Figure | None:
    """Rows each method contributed to each round's release."""
    if data.rounds.is_empty() or "method_mix" not in data.rounds.columns:
        return None
    mixes = {r: json.loads(m or "{}") for r, m in data.rounds.select("round", "method_mix").iter_rows()}
    methods = sorted({k for m in mixes.values() for k in m})
    if not methods:
        return None
    fig = go.Figure([go.Bar(name=m, x=[f"round {r}" for r in mixes], y=[mixes[r].get(m, 0) for r in mixes],
                            marker_color=PALETTE[i % len(PALETTE)]) for i, m in enumerate(methods)])
    return _layout(fig, 320, barmode="stack", title="release rows per method and round")


def _rgba(hex_color: str, alpha: float) -> str:
    r, g, b = (int(hex_color[i:i + 2], 16) for i in (1, 3, 5))
    return f"rgba({r},{g},{b},{alpha})"
