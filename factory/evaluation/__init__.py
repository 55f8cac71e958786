"""Held-out evaluation: verifiable suites made by code, NLL of held-out answers, paired comparisons.

Python API (the CLI is ``factory eval``)::

    from factory.evaluation import EvalConfig, evaluate, compare_runs, backend_config
    a = evaluate(backend_config("smollm2-135m-instruct"), EvalConfig(), "warehouse")
    b = evaluate(backend_config("models/sft-1"), EvalConfig(), "warehouse")
    compare_runs(b.warehouse, a.run_id, b.run_id)      # B − A per suite, paired CI, McNemar p

Training generators share the problem generators on the other stream (``problems.generate(family, n,
stream="train")``) and guard their data with ``decontam.assert_decontaminated(rows)``.
"""

from factory.evaluation.backend_spec import backend_config
from factory.evaluation.compare import compare_runs, record_comparison
from factory.evaluation.decontam import ContaminationError, assert_decontaminated, check_release, find_overlaps
from factory.evaluation.problems import Problem, generate
from factory.evaluation.run import DEFAULT_N, SUITES, EvalConfig, EvalError, EvalResult, evaluate

__all__ = ["DEFAULT_N", "SUITES", "ContaminationError", "EvalConfig", "EvalError", "EvalResult", "Problem",
           "assert_decontaminated", "backend_config", "check_release", "compare_runs", "evaluate", "find_overlaps",
           "generate", "record_comparison"]
