"""`factory eval`: checkers, answer extraction, statistics, disjoint streams, decontamination, and the real
CLI on the embedded model (slow)."""

from __future__ import annotations

import json
import math
import re
import shutil
from pathlib import Path

import polars as pl
import pytest
from typer.testing import CliRunner

from factory.backends.fake import FakeConfig
from factory.evaluation import checkers, decontam, problems, stats
from factory.evaluation.backend_spec import backend_config
from factory.evaluation.compare import compare_runs, record_comparison
from factory.evaluation.nll import HeldoutError, load_heldout
from factory.evaluation.run import EvalConfig, EvalError, evaluate, parse_sizes
from tests.conftest import DEMO_SEEDS
from tests.test_openai_backend import KEY_ENV, SERVER_KEY, key_env, llama_server  # noqa: F401 (fixtures)

# -- answer extraction --------------------------------------------------------------------------------


@pytest.mark.parametrize(("answer", "expected"), [
    ("27 + 82 = 109", 109), ("The answer is 109.", 109), ("**109**", 109), ("1,234", 1234), ("-5", -5),
    ("x = 2.50", 2.5), ("109 or 110", 110), ("10-5", 5), ("It is 1,234,567.", 1234567), ("100 − 45 = 55", 55),
    ("no number here", None), ("", None),
])
def test_extract_number_takes_the_last_number(answer: str, expected: float | None) -> None:
    assert checkers.extract_number(answer) == expected


def test_arithmetic_grading_is_exact() -> None:
    assert checkers.arithmetic_correct("So 27 + 82 = 109.", 109) == (True, "109")
    assert checkers.arithmetic_correct("27 + 82 = 198", 109) == (False, "198")
    assert checkers.arithmetic_correct("What is 27 + 82?", 109) == (False, "82")  # restating is not answering
    assert checkers.arithmetic_correct("109.5", 109) == (False, "109.5")
    assert checkers.arithmetic_correct("", 109) == (False, None)


# -- IFEval-style checkers: one true and one false case each (and empty is never correct) --------------

CHECKER_CASES = [
    ("bullets", {"n": 3}, "Intro:\n- one\n- two\n* three", "- one\n- two\n1. three"),
    ("max_words", {"n": 5}, "Leaves lose their chlorophyll.", "Leaves lose their green chlorophyll in autumn."),
    ("min_words", {"n": 4}, "one two three four", "one two three"),
    ("include_word", {"word": "kettle"}, "Boil the Kettles first.", "Boil the kettledrum first."),
    ("avoid_word", {"word": "tea"}, "Steep the leaves for three minutes.", "Steep the teas for three minutes."),
    ("json_keys", {"keys": ["name", "reason"]}, '```json\n{"name": "a", "reason": "b"}\n```',
     'Here it is: {"name": "a", "reason": "b"}'),
    ("lowercase", {}, "all small letters here.", "Not all small."),
    ("uppercase", {}, "ALL CAPITALS, 100%!", "ALL CAPITALS but one"),
    ("end_phrase", {"phrase": "That is all."}, "Water it weekly. **That is all.**", "That is all. Bye."),
    ("start_word", {"word": "Certainly"}, '"Certainly! Here you go.', "Sure, certainly."),
    ("no_commas", {}, "No commas in this one.", "One, two."),
    ("title", {}, "<<Tea Time>>\nBoil water.", "<<>> no title inside"),
    ("quoted", {}, '"Wrapped in quotes."', '"Only opened.'),
    ("postscript", {}, "Main text.\n\nP.S. Remember the milk.", "P.S. with nothing before it"),
]


@pytest.mark.parametrize(("name", "params", "good", "bad"), CHECKER_CASES, ids=[c[0] for c in CHECKER_CASES])
def test_checker_true_and_false(name: str, params: dict, good: str, bad: str) -> None:
    assert checkers.check(good, name, params) is True
    assert checkers.check(bad, name, params) is False
    assert checkers.check("   ", name, params) is False


def test_every_constraint_kind_has_a_tested_checker() -> None:
    assert set(problems.IFEVAL_KINDS) == {c[0] for c in CHECKER_CASES}


# -- statistics on known inputs --------------------------------------------------------------------------


def test_wilson_interval_known_values() -> None:
    lo, hi = stats.wilson(5, 10)
    assert (round(lo, 4), round(hi, 4)) == (0.2366, 0.7634)
    lo, hi = stats.wilson(0, 10)
    assert lo == 0.0 and round(hi, 4) == 0.2775
    lo, hi = stats.wilson(10, 10)
    assert round(lo, 4) == 0.7225 and hi == 1.0
    assert stats.wilson(0, 0) == (0.0, 1.0)


def test_mcnemar_exact_known_values() -> None:
    assert stats.mcnemar_exact(0, 0) == 1.0
    assert stats.mcnemar_exact(0, 5) == pytest.approx(2 / 32)
    assert stats.mcnemar_exact(1, 9) == pytest.approx(2 * 11 / 1024)
    assert stats.mcnemar_exact(9, 1) == stats.mcnemar_exact(1, 9)
    assert stats.mcnemar_exact(5, 5) == 1.0
    assert stats.mcnemar_exact(0, 20) < 1e-5


def test_paired_bootstrap() -> None:
    assert stats.paired_bootstrap_diff([0, 1, 0, 1], [0, 1, 0, 1]) == (0.0, 0.0, 0.0)
    assert stats.paired_bootstrap_diff([0] * 20, [1] * 20) == (1.0, 1.0, 1.0)
    a = [0, 0, 1, 0, 1, 0, 0, 1, 0, 0] * 10
    b = [1, 0, 1, 1, 1, 0, 1, 1, 0, 0] * 10
    diff, lo, hi = stats.paired_bootstrap_diff(a, b, seed=3)
    assert diff == pytest.approx(0.3)
    assert 0 < lo < 0.3 < hi < 0.5
    assert stats.paired_bootstrap_diff(a, b, seed=3) == (diff, lo, hi)  # a fixed seed: the same interval


def test_nll_statistics_are_token_weighted() -> None:
    value, lo, hi = stats.nll_per_token([10.0, 30.0], [10, 10])
    assert value == 2.0 and 1.0 <= lo <= value <= hi <= 3.0
    diff, lo, hi = stats.paired_nll_diff([10.0, 20.0], [10, 10], [5.0, 10.0], [10, 10])
    assert diff == pytest.approx(-0.75) and hi < 0


# -- problems: the eval and train streams never meet ------------------------------------------------------


@pytest.mark.parametrize("family", problems.FAMILIES)
def test_train_and_eval_streams_are_disjoint(family: str) -> None:
    cap = problems.MAX_ITEMS[family]
    eval_keys = {p.key for p in problems.generate(family, cap, "eval", 0)}
    eval_prompts = {p.prompt for p in problems.generate(family, cap, "eval", 0)}
    for seed in range(3):
        train = problems.generate(family, cap, "train", seed)
        assert len({p.key for p in train}) == cap  # distinct within the stream
        assert not eval_keys & {p.key for p in train}
        assert not eval_prompts & {p.prompt for p in train}
    assert not {t[0] for t in problems.EVAL_TOPICS} & {t[0] for t in problems.TRAIN_TOPICS}


def test_suites_are_fixed_prefixes() -> None:
    big = problems.generate("arithmetic", 40)
    assert problems.generate("arithmetic", 10) == big[:10]
    assert problems.generate("arithmetic", 10, seed=1) != big[:10]
    assert [p.kind for p in big[:4]] == ["add", "sub", "mul", "word"]


def test_arithmetic_references_are_right() -> None:
    for p in problems.generate("arithmetic", 200):
        if p.kind != "word":
            a, op, b = re.match(r"What is (\d+) (.) (\d+)\?", p.prompt).groups()
            assert int(p.reference) == {"+": int(a) + int(b), "-": int(a) - int(b), "×": int(a) * int(b)}[op]
        assert int(p.reference) >= 0
        assert p.grade(f"The answer is {p.reference}.") == (True, p.reference)
        assert p.grade(f"The answer is {int(p.reference) + 1}.")[0] is False


def test_generate_refuses_bad_arguments() -> None:
    with pytest.raises(ValueError, match="unknown stream"):
        problems.generate("arithmetic", 3, stream="test")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="between 0 and 280"):
        problems.generate("ifeval", 281)


# -- decontamination -------------------------------------------------------------------------------------


def test_decontamination_passes_clean_training_data() -> None:
    seeds = [json.loads(line) for line in DEMO_SEEDS.read_text().splitlines() if line.strip()]
    decontam.assert_decontaminated(seeds, "demo seeds")  # the held-out set was written disjoint from them
    train = [p.as_record() for f in problems.FAMILIES for p in problems.generate(f, 200, "train", 7)]
    decontam.assert_decontaminated(train, "train stream")


def test_decontamination_fails_loudly_on_overlap() -> None:
    arith = problems.generate("arithmetic", 8)
    bare = next(p for p in arith if p.kind == "add")
    a, b = re.match(r"What is (\d+) \+ (\d+)", bare.prompt).groups()
    word = next(p for p in arith if p.kind == "word")
    held = load_heldout()[0]
    ife = problems.generate("ifeval", 1)[0]
    renamed = re.sub(r"\b(" + "|".join(problems.NAMES) + r")\b", "Zed", word.prompt)
    rows = [
        {"instruction": "Name a colour.", "output": "Blue."},  # clean
        {"instruction": bare.prompt, "output": bare.reference},  # exact copy
        {"instruction": f"Compute {b} plus {a} for me.", "output": "ok"},  # the same problem reworded
        {"instruction": "Solve this.", "input": "Problem: " + renamed, "output": "x"},  # other names
        {"instruction": "Tell me something.", "output": "Well. " + held.answer},  # a held-out answer inside
        {"messages": [{"role": "user", "content": f"Please: {held.instruction} Thanks!"},
                      {"role": "assistant", "content": "sure"}]},
        {"prompt": ife.prompt, "chosen": "a", "rejected": "b"},
    ]
    found = decontam.find_overlaps(rows)
    assert [(o.row, o.reason) for o in found] == [
        (1, "exact_prompt"), (2, "arithmetic"), (3, "arithmetic"), (4, "ngram"), (5, "contains_prompt"),
        (6, "exact_prompt")]
    with pytest.raises(decontam.ContaminationError, match=r"my.jsonl: 6 overlap\(s\).*row 1 field 'instruction'"):
        decontam.assert_decontaminated(rows, "my.jsonl")
    decontam.assert_decontaminated(pl.DataFrame(rows[:1]), "frame")


def test_decontam_cli_on_a_file(tmp_path: Path) -> None:
    from factory.cli import app

    clean, dirty = tmp_path / "clean.jsonl", tmp_path / "dirty.jsonl"
    clean.write_text(json.dumps({"instruction": "Name a colour.", "output": "Blue."}) + "\n")
    p = problems.generate("arithmetic", 1)[0]
    dirty.write_text(json.dumps({"instruction": p.prompt, "output": p.reference}) + "\n")
    ok = CliRunner().invoke(app, ["decontam", str(clean)])
    assert ok.exit_code == 0 and "no overlap" in ok.output
    bad = CliRunner().invoke(app, ["decontam", str(dirty)])
    assert bad.exit_code == 1 and "1 overlap(s)" in bad.output and "exact_prompt" in bad.output


def test_decontam_cli_on_a_release(warehouse) -> None:
    from factory import releases
    from factory.cli import app
    from tests.test_releases import add_run

    clean = add_run(warehouse, "clean-run", ["Blue is a colour.", "Paris is in France."])
    releases.publish(warehouse, "clean", [clean], releases.ReleaseSpec(version="1.0.0"))
    leaked = add_run(warehouse, "leaky-run", ["Fine.", "Well. " + load_heldout()[3].answer])
    releases.publish(warehouse, "leaky", [leaked], releases.ReleaseSpec(version="1.0.0"))
    ok = CliRunner().invoke(app, ["decontam", "clean@1.0.0", "-w", str(warehouse.root)])
    assert ok.exit_code == 0 and "2 rows, no overlap" in ok.output
    bad = CliRunner().invoke(app, ["decontam", "leaky@latest", "-w", str(warehouse.root)])
    assert bad.exit_code == 1 and "ngram" in bad.output
    assert "release leaky@latest (sft): 2 overlap(s)" in bad.output  # the row's output and its chat messages
    missing = CliRunner().invoke(app, ["decontam", "nope@1.0.0", "-w", str(warehouse.root)])
    assert missing.exit_code == 1 and "nope" in missing.output and "Traceback" not in missing.output


# -- held-out NLL set ------------------------------------------------------------------------------------


def test_heldout_set_loads_and_bad_lines_are_named(tmp_path: Path) -> None:
    items = load_heldout()
    assert 40 <= len(items) <= 60 and len({i.item_id for i in items}) == len(items)
    bad = tmp_path / "qa.jsonl"
    bad.write_text('{"id": "a", "instruction": "Q?", "answer": "A."}\n{"id": "b", "instruction": "Q2?"}\n')
    with pytest.raises(HeldoutError, match=r"qa.jsonl:2: field 'answer'"):
        load_heldout(bad)


# -- configuration ---------------------------------------------------------------------------------------


def test_eval_config_and_backend_errors_name_the_field(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="suites"):
        EvalConfig(suites=["arithmetic", "poetry"])
    with pytest.raises(ValueError, match="extra"):
        EvalConfig(n_items=3)
    assert EvalConfig(n=5000).items("nll") == len(load_heldout())  # capped at what exists
    sized = EvalConfig(**parse_sizes("arithmetic=300, ifeval=7"))
    assert (sized.items("arithmetic"), sized.items("ifeval"), sized.items("nll")) == (300, 7, 52)
    assert EvalConfig(**parse_sizes("9")).items("ifeval") == 9
    assert EvalConfig(**parse_sizes(None)).identity() == EvalConfig().identity()
    with pytest.raises(EvalError, match="whole number"):
        parse_sizes("arithmetic=lots")
    with pytest.raises(ValueError, match="sizes.poetry"):
        EvalConfig(**parse_sizes("poetry=3"))
    pipeline = tmp_path / "p.yaml"
    pipeline.write_text("name: x\nbackend: {kind: transformers, batch_size: 4}\nstages: []\n")
    cfg = backend_config("some/folder", config_file=pipeline)
    assert (cfg.kind, cfg.model, cfg.batch_size) == ("transformers", "some/folder", 4)
    bad = tmp_path / "b.yaml"
    bad.write_text("kind: transformers\nbatch_size: many\n")
    with pytest.raises(EvalError, match=r"b.yaml: batch_size"):
        backend_config("m", config_file=bad)
    with pytest.raises(EvalError, match="no such backend config file"):
        backend_config("m", config_file=tmp_path / "missing.yaml")


# -- the bookkeeping, with a scripted backend (control flow only; the real model is tested below) -----------


def test_eval_rows_resume_and_paired_comparison_with_scripted_backend(warehouse, monkeypatch) -> None:
    cfg = EvalConfig(suites=["arithmetic", "nll"], n=6)
    right = FakeConfig(model="always-852", replies=["The answer is 852."])
    wrong = FakeConfig(model="never", replies=["I do not know."])
    a = evaluate(wrong, cfg, warehouse, show_progress=False)
    b = evaluate(right, cfg, warehouse, show_progress=False)
    assert a.unsupported["nll"].startswith("unsupported for backend kind 'fake'")
    assert b.ran == ["arithmetic"] and b.summaries["n"].to_list() == [6]
    assert b.summaries["correct"].to_list() == [1]  # only the first problem is 663 + 189
    rows = warehouse.query("SELECT run_id, suite, correct, extracted FROM evals ORDER BY run_id, item_id")
    assert rows.height == 12 and rows.filter(pl.col("run_id") == b.run_id)["correct"].sum() == 1
    again = evaluate(right, cfg, warehouse, show_progress=False)
    assert again.ran == [] and again.run_id == b.run_id  # finished suites are not redone
    assert warehouse.query("SELECT count(*) AS n FROM evals")["n"][0] == 12
    cmp = compare_runs(warehouse, a.run_id, b.run_id)
    row = cmp.row(0, named=True)
    assert (row["suite"], row["n"], row["a_only"], row["b_only"]) == ("arithmetic", 6, 0, 1)
    assert row["diff"] == pytest.approx(1 / 6) and row["p_mcnemar"] == 1.0
    record_comparison(warehouse, cmp)
    stored = warehouse.query("SELECT suite, diff FROM eval_comparisons")
    assert stored.height == 1
    with pytest.raises(EvalError, match="nll: unsupported"):
        evaluate(right, EvalConfig(suites=["nll"]), warehouse, show_progress=False)
    import factory.evaluation.run as run_module

    monkeypatch.setattr(run_module, "EVAL_VERSION", "0")  # rows graded by an older version of the checkers
    old = evaluate(right, cfg, warehouse, show_progress=False)
    monkeypatch.undo()
    assert old.run_id != b.run_id
    with pytest.raises(EvalError, match="different eval versions"):
        compare_runs(warehouse, old.run_id, b.run_id)


def test_model_id_of_a_folder_is_the_models_table_id(tmp_path: Path) -> None:
    """Eval rows join `factory train`'s models table: a folder's id is the same hash of its safetensors."""
    from factory.backends.transformers_backend import TransformersConfig
    from factory.evaluation.run import model_identity
    from factory.training.trainer import weights_id

    (tmp_path / "model-00001.safetensors").write_bytes(b"weights one")
    (tmp_path / "model-00002.safetensors").write_bytes(b"weights two")
    (tmp_path / "config.json").write_text("{}")
    first = model_identity(TransformersConfig(model=str(tmp_path)))
    assert first == weights_id(tmp_path)
    (tmp_path / "model-00002.safetensors").write_bytes(b"retrained in place")
    assert model_identity(TransformersConfig(model=str(tmp_path))) != first
    assert model_identity(TransformersConfig()) == "smollm2-135m-instruct"


def test_a_model_that_cannot_be_found_records_nothing(warehouse) -> None:
    from factory.backends.base import BackendUnavailable
    from factory.backends.transformers_backend import TransformersConfig

    with pytest.raises(BackendUnavailable, match="neither"):
        evaluate(TransformersConfig(model="/nowhere/model"), EvalConfig(n=1), warehouse, show_progress=False)
    assert warehouse.query("SELECT count(*) AS n FROM runs")["n"][0] == 0


# -- the real thing: the CLI on the embedded model -------------------------------------------------------


@pytest.mark.slow
def test_factory_eval_cli_on_the_embedded_model(tmp_path: Path) -> None:
    from factory.cli import app
    from factory.models import EMBEDDED_LLM, converted_dir
    from factory.warehouse import Warehouse

    wh = tmp_path / "wh"
    args = ["--n", "2", "--max-tokens", "24", "--threads", "1", "-w", str(wh), "-q"]  # 1 thread: fast on a busy machine
    res = CliRunner().invoke(app, ["eval", EMBEDDED_LLM, "--json", *args])
    assert res.exit_code == 0, res.output
    doc = json.loads(res.output[res.output.index("{"):])
    assert [s["suite"] for s in doc["summaries"]] == ["arithmetic", "ifeval", "nll"]
    w = Warehouse(wh)
    rows = w.query("SELECT suite, answer, correct, nll, tokens, model_id, eval_version FROM evals ORDER BY suite")
    assert rows["suite"].to_list() == ["arithmetic"] * 2 + ["ifeval"] * 2 + ["nll"] * 2
    generated = rows.filter(pl.col("suite") != "nll")
    assert generated["answer"].str.len_chars().min() > 0 and generated["correct"].null_count() == 0
    held = rows.filter(pl.col("suite") == "nll")
    assert (held["nll"] > 0).all() and (held["tokens"] > 3).all()
    nll_row = next(s for s in doc["summaries"] if s["suite"] == "nll")
    assert 0 < nll_row["value"] < 10 and nll_row["ci_low"] <= nll_row["value"] <= nll_row["ci_high"]
    summaries = w.query("SELECT suite, n FROM eval_summaries ORDER BY suite")
    assert summaries.rows() == [("arithmetic", 2), ("ifeval", 2), ("nll", 2)]

    # the same weights under another name (the converted folder): a paired comparison of identical
    # answers must say exactly zero, with McNemar's p = 1
    folder = tmp_path / "copy"
    shutil.copytree(converted_dir(EMBEDDED_LLM), folder)
    res = CliRunner().invoke(app, ["eval", str(folder), "--against", EMBEDDED_LLM, "--json", *args])
    assert res.exit_code == 0, res.output
    doc = json.loads(res.output[res.output.index("{"):])
    assert doc["model_id"] != doc["against"]["model_id"]
    by_suite = {c["suite"]: c for c in doc["comparison"]}
    assert set(by_suite) == {"arithmetic", "ifeval", "nll"}
    for suite in ("arithmetic", "ifeval"):
        assert by_suite[suite]["diff"] == 0 and by_suite[suite]["p_mcnemar"] == 1.0
    assert math.isclose(by_suite["nll"]["diff"], 0, abs_tol=1e-4)
    answers = w.query("SELECT run_id, item_id, answer FROM evals WHERE suite <> 'nll'")
    per_item = answers.group_by("item_id").agg(pl.col("answer").n_unique().alias("k"), pl.len().alias("runs"))
    assert (per_item["runs"] == 2).all() and (per_item["k"] == 1).all()
    assert w.query("SELECT count(*) AS n FROM eval_comparisons")["n"][0] == 3
    bad = CliRunner().invoke(app, ["eval", str(tmp_path / "nope"), "-w", str(wh)])
    assert bad.exit_code == 1 and "neither" in bad.output and "Traceback" not in bad.output


@pytest.mark.slow
def test_factory_eval_through_an_openai_compatible_server(llama_server: str, key_env,  # noqa: F811
                                                           tmp_path: Path) -> None:
    """The openai backend from a --backend-config file: answers come from a real llama.cpp server, and the
    NLL suite, which needs logits, is reported as unsupported rather than silently missing."""
    from factory.cli import app
    from factory.warehouse import Warehouse

    key_env(SERVER_KEY)
    conf = tmp_path / "serve.yaml"
    conf.write_text(f"backend:\n  kind: openai\n  base_url: {llama_server}\n  api_key_env: {KEY_ENV}\n"
                    "  concurrency: 2\n")
    res = CliRunner().invoke(app, ["eval", "smollm2", "--backend-config", str(conf), "--suites", "arithmetic,nll",
                                   "--n", "2", "--max-tokens", "16", "-w", str(tmp_path / "wh"), "-q", "--json"])
    assert res.exit_code == 0, res.output
    doc = json.loads(res.output[res.output.index("{"):])
    assert [s["suite"] for s in doc["summaries"]] == ["arithmetic"]
    assert doc["unsupported"]["nll"].startswith("unsupported for backend kind 'openai'")
    rows = Warehouse(tmp_path / "wh").query("SELECT model, answer, finish_reason FROM evals")
    assert rows.height == 2 and rows["model"].unique().to_list() == ["smollm2"]
    assert rows["answer"].str.len_chars().min() > 0
