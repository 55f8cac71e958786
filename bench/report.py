"""How fast a report of 100,000 samples opens, against a 1,000-sample report measured in the same run.

Both runs are demo-shaped (rejects at every stage, judge calibration, dedup clusters, scores kept and
dropped) and written straight through the warehouse API (factory.report.synthetic). For each size:
the time ``factory report`` takes to write the page (after one warm-up write: imports and plotly.js
are read once per process), its size, and the time it takes to open in
headless Chromium: from navigation start to the moment the page's own script has drawn every figure
and filled the record browser (``data-ready-ms``, measured by the page; the browser's start-up is
shown apart). Rounds alternate between the sizes so machine load hits both alike. The goal: under
5 s at 100,000 samples.

    .venv/bin/python bench/report.py [--samples 100000] [--baseline 1000] [--rounds 3]

Ends with one line ``RESULT {json}``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from factory.report import BROWSER_ROWS, chromium, write_report  # noqa: E402
from factory.report.synthetic import make_run  # noqa: E402
from factory.warehouse import Warehouse  # noqa: E402

GOAL_MS = 5_000


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--samples", type=int, default=100_000)
    ap.add_argument("--baseline", type=int, default=1_000)
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()
    chromium.find()  # fail now, not after building the warehouse
    sizes = [args.baseline, args.samples]
    with tempfile.TemporaryDirectory(prefix="bench-report-") as tmp:
        wh = Warehouse(Path(tmp) / "wh")
        pages = {n: Path(tmp) / f"report-{n}.html" for n in sizes}
        for n in sizes:
            began = time.perf_counter()
            make_run(wh, n, run_id=f"bench-{n}")
            print(f"{n:>7} samples: warehouse written in {time.perf_counter() - began:.1f}s", flush=True)
        write_report(wh, Path(tmp) / "warm-up.html", run_id=f"bench-{sizes[0]}")
        writes: dict[int, list[float]] = {n: [] for n in sizes}
        opened: dict[int, list[float]] = {n: [] for n in sizes}
        walls: dict[int, list[float]] = {n: [] for n in sizes}
        for r in range(args.rounds):
            for n in sizes:
                began = time.perf_counter()
                write_report(wh, pages[n], run_id=f"bench-{n}")
                writes[n].append(time.perf_counter() - began)
                res = chromium.render(pages[n], wait_ms=None)
                if res.errors or res.stderr_errors or res.ready_ms is None:
                    raise SystemExit(f"report of {n} samples did not open cleanly: {res.errors or res.stderr_errors}")
                opened[n].append(res.ready_ms)
                walls[n].append(res.seconds)
                print(f"round {r}: {n:>7} samples: written in {writes[n][-1]:.2f}s ({pages[n].stat().st_size / 1e6:.2f}"
                      f" MB), opened in {res.ready_ms:.0f} ms (browser process {res.seconds:.1f}s)", flush=True)
        size_mb = {n: round(pages[n].stat().st_size / 1e6, 2) for n in sizes}
    med = {n: statistics.median(v) for n, v in opened.items()}
    write = {n: statistics.median(v) for n, v in writes.items()}
    big, base = args.samples, args.baseline
    result = {
        "samples": big, "baseline_samples": base, "browser_rows": BROWSER_ROWS, "rounds": args.rounds,
        "open_ms_median": round(med[big]), "open_ms_all": [round(x) for x in opened[big]],
        "baseline_open_ms_median": round(med[base]), "open_ratio_vs_baseline": round(med[big] / med[base], 3),
        "browser_process_s_median": round(statistics.median(walls[big]), 2),
        "baseline_browser_process_s_median": round(statistics.median(walls[base]), 2),
        "write_s_median": round(write[big], 2), "baseline_write_s_median": round(write[base], 2),
        "write_ratio_vs_baseline": round(write[big] / write[base], 3),
        "html_mb": size_mb[big], "baseline_html_mb": size_mb[base],
        "goal_ms": GOAL_MS, "under_goal": med[big] < GOAL_MS,
        "cpus": os.cpu_count(), "load_avg_1m": round(os.getloadavg()[0], 2),
    }
    print("RESULT " + json.dumps(result))


if __name__ == "__main__":
    main()
