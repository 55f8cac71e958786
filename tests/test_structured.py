"""Structured generation: the constraint model, cache keys, parsing, backends' request shapes, the stages'
structured paths with a scripted backend, and (slow) the real embedded model and llama.cpp server."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from factory.backends.base import ChatRequest, GenParams
from factory.backends.fake import FakeBackend, FakeConfig
from factory.backends.openai_compat import constraint_body
from factory.config import ConfigError, parse_pipeline
from factory.context import StageContext
from factory.records import canonical_json
from factory.structured import OutputConstraint, final_answer_constraint, parse_final_answer
from stages.judge import JudgeConfig, structured_score, structured_winner, verdict_constraint, winner_constraint
from stages.judge import run as judge_run
from stages.self_instruct import SelfInstructConfig, parse_json_tasks, tasks_constraint
from tests.conftest import write_jsonl
from tests.test_openai_backend import KEY_ENV, SERVER_KEY, llama_server, ok_body, stub, stub_backend  # noqa: F401


class Verdict(BaseModel):
    model_config = ConfigDict(extra="forbid")
    justification: str = Field(max_length=80)
    score: int = Field(ge=0, le=5)


# -- the constraint and the cache key -------------------------------------------------------------------


def test_params_without_a_constraint_dump_and_key_as_before():
    """Cache keys and config hashes made before constraints existed must not move."""
    params = GenParams(max_tokens=64, temperature=0.5, top_p=0.9, seed=7)
    assert params.model_dump() == {"max_tokens": 64, "temperature": 0.5, "top_p": 0.9, "seed": 7}
    assert params.model_dump(mode="json") == params.model_dump()
    req = ChatRequest.of([{"role": "user", "content": "hi"}], params)
    # the key as it was computed before GenParams had a constraint field
    from factory.records import content_id
    old_key = content_id("chat", "m", req.messages, {"max_tokens": 64, "temperature": 0.5, "top_p": 0.9, "seed": 7})
    assert req.cache_key("m") == old_key


def test_constraint_is_part_of_the_key_hashable_and_canonical():
    base = GenParams(max_tokens=64)
    req = ChatRequest.of([{"role": "user", "content": "hi"}], base)
    schema = GenParams(max_tokens=64, constraint=OutputConstraint.from_model(Verdict))
    choice = GenParams(max_tokens=64, constraint=OutputConstraint.from_choices(["A", "B"]))
    keys = {ChatRequest(req.messages, p).cache_key("m") for p in (base, schema, choice)}
    assert len(keys) == 3
    # the same constraint built three ways: one key, one hash
    same = [GenParams(max_tokens=64, constraint=OutputConstraint(json_schema=Verdict.model_json_schema())),
            GenParams(max_tokens=64, constraint=OutputConstraint(json_schema=json.dumps(Verdict.model_json_schema(),
                                                                                       indent=2))),
            GenParams.model_validate({"max_tokens": 64,
                                      "constraint": {"json_schema": Verdict.model_json_schema()}})]
    assert len({ChatRequest(req.messages, p).cache_key("m") for p in [schema, *same]}) == 1
    assert len({hash(p) for p in [schema, *same]}) == 1
    with pytest.raises(ValidationError):
        schema.constraint.regex = "x"  # frozen


def test_property_order_changes_the_key():
    """Field order decides what a constrained model writes first, so it is not sorted away."""
    a = OutputConstraint.from_schema({"type": "object", "properties": {"x": {"type": "integer"},
                                                                      "y": {"type": "integer"}}})
    b = OutputConstraint.from_schema({"type": "object", "properties": {"y": {"type": "integer"},
                                                                      "x": {"type": "integer"}}})
    assert canonical_json(GenParams(constraint=a).model_dump()) != canonical_json(GenParams(constraint=b).model_dump())


@pytest.mark.parametrize("spec, message", [
    ({}, "exactly one of json_schema, regex or choices (got none)"),
    ({"regex": "a", "choices": ["a"]}, "exactly one"),
    ({"choices": []}, "non-empty"),
    ({"choices": ["A", "A"]}, "repeat"),
    ({"json_schema": {"type": "strin"}}, "not a valid JSON Schema at type"),
    ({"json_schema": "{not json"}, "json_schema is not valid JSON"),
    ({"regex": "a(b"}, "regex cannot be compiled for constrained decoding"),
])
def test_bad_constraints_are_one_clear_error(spec: dict, message: str):
    with pytest.raises(ValidationError) as err:
        OutputConstraint.model_validate(spec)
    assert message in str(err.value)


def test_a_bad_constraint_in_a_pipeline_file_fails_at_config_time(tmp_path: Path):
    """The pipeline is refused when it is read (no backend loads): one line naming the field."""
    cfg = {"name": "bad", "backend": {"kind": "transformers"},
           "stages": [{"kind": "seeds", "paths": [str(tmp_path)]},
                      {"kind": "self_label", "params": {"max_tokens": 32, "constraint": {"regex": "(unclosed"}}}]}
    with pytest.raises(ConfigError) as err:
        parse_pipeline(cfg, "p.yaml")
    lines = [line for line in str(err.value).splitlines() if "constraint" in line]
    assert len(lines) == 1 and "stages.1.self_label.params.constraint" in lines[0]
    assert "regex cannot be compiled" in lines[0] and "unclosed group" in lines[0]


def test_factory_run_refuses_a_schema_that_cannot_compile(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """`factory run` stops before any model loads, with one line naming the field and the reason."""
    from typer.testing import CliRunner

    import factory.models
    from factory.cli import app

    monkeypatch.setattr(factory.models, "load_causal_lm", lambda *a, **k: pytest.fail("a model was loaded"))
    pipeline = tmp_path / "p.yaml"
    pipeline.write_text(json.dumps({
        "name": "bad", "warehouse": str(tmp_path / "wh"), "backend": {"kind": "transformers"},
        "stages": [{"kind": "seeds", "paths": [str(tmp_path)]},
                   {"kind": "self_label", "params": {"constraint": {"json_schema": {"type": "object",
                                                                                    "minProperties": "two"}}}}]}))
    result = CliRunner().invoke(app, ["run", str(pipeline)])
    assert result.exit_code == 1
    problem = [line for line in result.output.splitlines() if "constraint" in line]
    assert len(problem) == 1 and "not a valid JSON Schema at minProperties" in problem[0], result.output
    assert not (tmp_path / "wh").exists()  # nothing half-written


def test_vllm_sampling_params_carry_the_constraint(monkeypatch: pytest.MonkeyPatch):
    """The thin vLLM mapping, against a stand-in for ``vllm.sampling_params`` (no GPU here)."""
    import sys
    import types

    from factory.backends.vllm_backend import VLLMBackend

    module = types.ModuleType("vllm.sampling_params")
    module.StructuredOutputsParams = lambda **kw: kw  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "vllm", types.ModuleType("vllm"))
    monkeypatch.setitem(sys.modules, "vllm.sampling_params", module)
    schema = final_answer_constraint("number")
    assert VLLMBackend._structured(None) is None
    assert VLLMBackend._structured(schema) == {"json": schema.schema_dict, "disable_any_whitespace": True}
    assert VLLMBackend._structured(OutputConstraint.from_regex("[0-9]+")) == {"regex": "[0-9]+"}
    assert VLLMBackend._structured(OutputConstraint.from_choices(["A", "B"])) == {"choice": ["A", "B"]}


def test_check_and_parse():
    c = OutputConstraint.from_model(Verdict)
    assert c.parse('{"justification":"fine","score":4}') == {"justification": "fine", "score": 4}
    for bad, why in [('{"justification":"fine","score":9}', "greater than the maximum"),
                     ('{"justification":"fine","sco', "not JSON"),  # cut at max_tokens
                     ('{"justification":"fine"}', "'score' is a required property"),
                     ('Score: 4', "not JSON")]:
        assert c.parse(bad) is None
        with pytest.raises(ValueError, match=why):
            c.check(bad)
    r = OutputConstraint.from_regex(r"[0-9]+")
    assert r.parse("123") == "123" and r.parse("12a") is None
    ch = OutputConstraint.from_choices(["A", "B"])
    assert ch.parse("B") == "B" and ch.parse("C") is None


def test_final_answer_helper():
    number = final_answer_constraint("number")
    assert parse_final_answer('{"reasoning":"2+2","final_answer":4}', number) == 4
    assert parse_final_answer('{"reasoning":"2+2","final_answer":"four"}', number) is None
    choice = final_answer_constraint(choices=["yes", "no"])
    assert parse_final_answer('{"reasoning":"","final_answer":"no"}', choice) == "no"
    assert parse_final_answer('{"reasoning":"","final_answer":"maybe"}', choice) is None
    assert number.schema_dict["properties"]["reasoning"]["maxLength"] == 400


# -- backends: how the constraint is sent ----------------------------------------------------------------


def test_openai_dialects():
    schema, regex, choice = (final_answer_constraint(), OutputConstraint.from_regex("[AB]"),
                             OutputConstraint.from_choices(["A", "B \"quoted\""]))
    body = constraint_body(schema, "openai")
    assert body["response_format"]["type"] == "json_schema"
    assert body["response_format"]["json_schema"]["schema"] == schema.schema_dict
    assert constraint_body(schema, "llama_cpp_python") == {"response_format": {"type": "json_object",
                                                                               "schema": schema.schema_dict}}
    assert constraint_body(regex, "vllm") == {"structured_outputs": {"regex": "[AB]"}}
    assert constraint_body(choice, "vllm") == {"structured_outputs": {"choice": ["A", 'B "quoted"']}}
    assert constraint_body(choice, "llama_cpp_python") == {"grammar": 'root ::= "A" | "B \\"quoted\\""'}
    for c, dialect in [(regex, "openai"), (choice, "openai"), (regex, "llama_cpp_python")]:
        with pytest.raises(ValueError, match=f"cannot send a {c.kind} constraint"):
            constraint_body(c, dialect)


def test_a_server_that_ignores_the_constraint_is_a_clear_error(stub, monkeypatch):  # noqa: F811
    """Answers that ended normally but all violate their constraint mean the server dropped it."""
    monkeypatch.setenv(KEY_ENV, "k")
    c = final_answer_constraint("number")
    req = ChatRequest.of([{"role": "user", "content": "2+2?"}], GenParams(max_tokens=32, constraint=c))
    with pytest.raises(Exception, match="ignored the json_schema output constraint"):
        stub_backend(stub((200, ok_body("It is four.")))).generate([req, req])
    # one answer valid, one not: the server constrains, the model was merely cut or odd
    outs = stub_backend(stub((200, ok_body('{"reasoning":"","final_answer":4}')), (200, ok_body("four")))
                        ).generate([req, req])
    assert sorted(o.text for o in outs) == ['four', '{"reasoning":"","final_answer":4}']
    # a refusal naming the field stops the run instead of rejecting every answer
    with pytest.raises(Exception, match="refused the json_schema output constraint.*HTTP 400"):
        stub_backend(stub((400, {"error": "response_format json_schema is not supported"}))).generate([req])


# -- stages with a scripted backend ---------------------------------------------------------------------


def _ctx(warehouse, backend) -> StageContext:
    return StageContext(run_id="r", stage_name="judge", position=0, round=0, seed=0, warehouse=warehouse,
                        earlier_stages=[], backend_loader=lambda: backend, show_progress=False)


def test_verdict_schemas_fit_max_tokens():
    small, large = verdict_constraint(32), verdict_constraint(128)
    assert small.schema_dict["properties"]["justification"]["maxLength"] < \
        large.schema_dict["properties"]["justification"]["maxLength"]
    assert list(small.schema_dict["properties"]) == ["justification", "score"]
    assert structured_score('{"justification":"ok","score":3}', small) == 3.0
    assert structured_score('{"justification":"ok","score":6}', small) is None
    assert structured_score('Score: 3', small) is None
    w = winner_constraint(32)
    assert structured_winner('{"reason":"x","winner":"B"}', w) == "B"
    assert structured_winner('{"reason":"x","winner":"C"}', w) is None


def test_structured_judge_sends_the_schema_and_rejects_violations(warehouse):
    """Calibration through the structured path: the schema reaches the backend on every request, valid
    verdicts are scored, and a truncated or out-of-range one is a parse failure with its raw text kept."""
    replies = ['{"justification":"good","score":5}', '{"justification":"bad","score":1}',
               '{"justification":"cut sho', '{"justification":"odd","score":9}']
    backend = FakeBackend(FakeConfig(replies=replies))
    out = judge_run(_ctx(warehouse, backend), JudgeConfig(k=1, calibration_size=3,
                                                          params=GenParams(max_tokens=64)))
    assert backend.requests and all(r.params.constraint == verdict_constraint(64) for r in backend.requests)
    assert "Reply with a JSON object" in backend.requests[0].messages[-1][1]
    calib = out.tables["judgments"].sort("target_ids")
    assert set(calib["judge_template_id"]) == {"judge/additive5-json@1"}
    assert calib["parsed_ok"].sum() == 4  # 6 judgments cycle the 4 replies: one cut, one out of range
    failed = calib.filter(~calib["parsed_ok"])
    assert set(failed["raw_text"]) == {'{"justification":"cut sho', '{"justification":"odd","score":9}'}
    assert out.metrics["structured"] is True
    assert out.metrics["calibration_parse_failure_rate"] == round(2 / 6, 4)


def test_judge_config_checks_its_budget():
    with pytest.raises(ValidationError, match="structured judge needs params.max_tokens"):
        JudgeConfig(params=GenParams(max_tokens=12))
    JudgeConfig(structured=False, params=GenParams(max_tokens=12))
    with pytest.raises(ValidationError, match="set by the judge itself"):
        JudgeConfig(params=GenParams(constraint=OutputConstraint.from_choices(["A"])))


def test_structured_self_instruct(tmp_path: Path):
    """JSON tasks with inputs: parsed, filtered and kept with their input and category; a violating or
    truncated answer is one `unparseable` reject carrying its raw text and the reason."""
    seeds = write_jsonl(tmp_path / "seeds.jsonl", [
        {"instruction": "Write a haiku about rain.", "category": "writing"},
        {"instruction": "Give three tips for learning a language.", "category": "advice"}])
    good = json.dumps({"tasks": [
        {"instruction": "Summarise the following paragraph in one sentence.", "input": "Cats sleep a lot.",
         "category": "writing"},
        {"instruction": "Suggest a name for a bakery near the sea.", "input": "", "category": "advice"}]})
    cut = '{"tasks":[{"instruction":"Write a limerick about a'
    cfg = {"name": "si", "warehouse": str(tmp_path / "wh"),
           "backend": {"kind": "fake", "replies": [good, cut]},
           "stages": [{"kind": "seeds", "paths": [str(seeds)]},
                      {"kind": "self_instruct", "structured": True, "target_tasks": 5, "max_calls": 2,
                       "prompts_per_batch": 2}]}
    from factory.runner import run_pipeline

    wh = run_pipeline(parse_pipeline(cfg), show_progress=False).warehouse
    tasks = wh.query("SELECT instruction, input, category, template_id FROM tasks WHERE source = 'self_instruct' "
                     "ORDER BY instruction").to_dicts()
    assert [t["instruction"] for t in tasks] == ["Suggest a name for a bakery near the sea.",
                                                 "Summarise the following paragraph in one sentence."]
    assert tasks[1]["input"] == "Cats sleep a lot." and tasks[0]["category"] == "advice"
    assert {t["template_id"] for t in tasks} == {"self_instruct/bootstrap-json@1"}
    rejects = wh.query("SELECT reason, raw, detail FROM rejects WHERE stage = 'self_instruct'").to_dicts()
    assert [r["reason"] for r in rejects] == ["unparseable"] and rejects[0]["raw"] == cut
    assert "violates the task schema: not JSON" in rejects[0]["detail"]


def test_self_instruct_defaults_keep_the_config_hash():
    """A pipeline written before `structured` existed keeps its run id (which seeds self-instruct's
    demo sampling), so its cached calls still hit; turning it on changes the hash."""
    cfg = {"name": "h", "backend": {"kind": "fake"},
           "stages": [{"kind": "seeds", "paths": ["x"]}, {"kind": "self_instruct"}]}
    dumped = parse_pipeline(cfg).model_dump(mode="json")["stages"][1]
    assert not {"structured", "instruction_chars", "input_chars", "constraint"} & (set(dumped) | set(dumped["params"]))
    on = {**cfg, "stages": [cfg["stages"][0], {"kind": "self_instruct", "structured": True}]}
    assert parse_pipeline(on).config_hash != parse_pipeline(cfg).config_hash


def test_tasks_schema():
    cfg = SelfInstructConfig(tasks_per_call=3, instruction_chars=50)
    c = tasks_constraint(cfg, ["b", "a"])
    props = c.schema_dict["properties"]["tasks"]
    assert props["maxItems"] == 3 and props["items"]["properties"]["category"]["enum"] == ["a", "b"]
    assert parse_json_tasks('{"tasks":[{"instruction":" x y z ","input":"","category":"a"}]}', c) == [
        {"instruction": "x y z", "input": "", "category": "a"}]
    assert parse_json_tasks('{"tasks":[{"instruction":"x","input":"","category":"c"}]}', c) is None
    assert parse_json_tasks('{"tasks":[]}', c) is None


# -- the real embedded model (slow) ---------------------------------------------------------------------


@pytest.mark.slow
def test_every_output_of_a_constrained_batch_validates(embedded_backend):
    """One batch of the real 135M model mixing a JSON schema, a final-answer schema, a regex, a choice
    list and an unconstrained row (left padding, different constraints per row): every constrained output
    satisfies its constraint. String bounds are small enough that max_tokens cannot cut the JSON."""
    verdict = OutputConstraint.from_model(Verdict)
    answer = final_answer_constraint("integer", reasoning_chars=60)
    regex = OutputConstraint.from_regex(r"[0-9]{1,3} (apples|pears)")
    choice = OutputConstraint.from_choices(["yes", "no"])
    asks = [("Rate this answer to 'What is 2+2?': '4'. Reply in JSON with justification and score.", verdict),
            ("Rate this answer to 'Capital of France?': 'Berlin'. Reply in JSON.", verdict),
            ("What is 12 + 30? Think, then give the final answer as JSON.", answer),
            ("How many legs do 3 cats have? Reply in JSON.", answer),
            ("How many apples are in a box? Answer like '12 apples'.", regex),
            ("Is the sea salty? Answer yes or no.", choice),
            ("Is fire cold?", choice),
            ("Say hello to a friend.", None)]
    requests = [ChatRequest.of([{"role": "user", "content": q}],
                               GenParams(max_tokens=96, temperature=0.8, top_p=0.95, seed=i, constraint=c))
                for i, (q, c) in enumerate(asks)]
    outs = embedded_backend.generate(requests)
    assert len(outs) == len(asks)
    for (question, c), out in zip(asks, outs, strict=True):
        if c is None:
            assert out.text  # the free row is untouched by its neighbours' grammars
            continue
        assert out.finish_reason == "stop", (question, out.text)
        c.check(out.text)  # raises, naming the violation, if the decoder let one through
    assert embedded_backend._grammars is not None  # the llguidance path, not a lucky free generation


@pytest.mark.slow
def test_structured_judge_on_the_embedded_model_parses_every_verdict(warehouse, embedded_backend):
    """The constrained judge on the real model: every verdict parses (the free-text judge's parse failures
    were the reason for this work); calibration accuracy is recorded, not asserted (it is the model's)."""
    ctx = _ctx(warehouse, embedded_backend)
    out = judge_run(ctx, JudgeConfig(k=1, calibration_size=3,
                                     params=GenParams(max_tokens=64, temperature=0.7, top_p=0.95)))
    calib = out.tables["judgments"]
    assert calib.height == 6 and calib["parsed_ok"].all(), calib["raw_text"].to_list()
    assert set(calib["score"].to_list()) <= {0.0, 1.0, 2.0, 3.0, 4.0, 5.0}
    print(f"\nstructured judge: calibration accuracy {out.metrics['calibration_accuracy']} on 3 pairs")


@pytest.mark.slow
def test_openai_backend_gets_schema_valid_json_from_llama_cpp_server(llama_server: str,  # noqa: F811
                                                                     monkeypatch: pytest.MonkeyPatch):
    """The real llama.cpp server (llama-cpp-python): the schema goes as response_format and every answer
    is JSON that validates; a choice list goes as a GBNF grammar. Its server takes only ``json_object``
    (with a schema) and answers the OpenAI ``json_schema`` form with a validation error: one clear error."""
    from factory.backends import BackendUnavailable, load_backend
    from factory.backends.openai_compat import OpenAIConfig

    monkeypatch.setenv(KEY_ENV, SERVER_KEY)
    verdict = OutputConstraint.from_model(Verdict)
    choice = OutputConstraint.from_choices(["yes", "no"])

    def ask(text: str, c: OutputConstraint, seed: int) -> ChatRequest:
        return ChatRequest.of([{"role": "user", "content": text}],
                              GenParams(max_tokens=80, temperature=0.7, top_p=0.95, seed=seed, constraint=c))

    backend = load_backend(OpenAIConfig(model="smollm2", base_url=llama_server, api_key_env=KEY_ENV,
                                        concurrency=2, structured_dialect="llama_cpp_python"))
    asks = [ask("Rate the answer '4' to 'What is 2+2?' with a justification and a score.", verdict, 0),
            ask("Rate the answer 'Berlin' to 'Capital of France?'. Reply in JSON.", verdict, 1),
            ask("Is the sea salty? Answer yes or no.", choice, 2)]
    outs = backend.generate(asks)
    for req, out in zip(asks, outs, strict=True):
        assert out.error is None and out.finish_reason == "stop", out
        req.params.constraint.check(out.text)
    assert isinstance(verdict.check(outs[0].text)["score"], int)

    refusing = load_backend(OpenAIConfig(model="smollm2", base_url=llama_server, api_key_env=KEY_ENV,
                                        max_retries=0))  # dialect "openai": response_format json_schema
    with pytest.raises(BackendUnavailable, match="refused the json_schema output constraint sent as "
                                                 "structured_dialect 'openai'.*set backend.structured_dialect"):
        refusing.generate(asks[:1])
