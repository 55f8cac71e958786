"""Output constraints for structured generation: a JSON Schema, a regex or a list of choices.

A constraint rides on ``GenParams`` (so it is part of every cache key and of every record's lineage) and
each backend turns it into its own mechanism: a llguidance logits processor (transformers), vLLM's
``StructuredOutputsParams``, or ``response_format`` on an OpenAI-compatible server. It is compiled here,
once, with llguidance and without a tokenizer, so a schema no backend could use is a clear error when the
config is read, before any model loads.

The JSON Schema is kept as compact JSON *text*, not a dict: property order decides the order in which a
constrained model writes the fields, so it must survive into the cache key (which sorts dict keys), and a
string keeps the frozen model hashable.
"""

from __future__ import annotations

import json
import re
from functools import lru_cache
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator


class ConstraintError(ValueError):
    """A constraint that cannot be compiled; the message says which kind and why, on one line."""


class OutputConstraint(BaseModel):
    """Exactly one of ``json_schema`` (JSON text, or a mapping, or a pydantic model class), ``regex`` or
    ``choices``. Build with ``from_model``, ``from_schema``, ``from_regex`` or ``from_choices``."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    json_schema: str | None = Field(None, description="a JSON Schema (compact JSON text; a mapping is accepted)")
    regex: str | None = Field(None, description="the whole output must match this regex")
    choices: tuple[str, ...] | None = Field(None, description="the output is exactly one of these strings")

    @field_validator("json_schema", mode="before")
    @classmethod
    def _schema_text(cls, value: Any) -> Any:
        if isinstance(value, type) and issubclass(value, BaseModel):
            value = value.model_json_schema()
        if isinstance(value, str):
            try:
                value = json.loads(value)
            except json.JSONDecodeError as exc:
                raise ValueError(f"json_schema is not valid JSON: {exc.msg} at position {exc.pos}") from None
        if isinstance(value, dict):
            return json.dumps(value, separators=(",", ":"), ensure_ascii=False)  # insertion order kept
        return value

    @model_validator(mode="after")
    def _exactly_one_and_compiles(self) -> OutputConstraint:
        given = [k for k in ("json_schema", "regex", "choices") if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError(f"give exactly one of json_schema, regex or choices (got {', '.join(given) or 'none'})")
        if self.choices is not None:
            if not self.choices or any(not c for c in self.choices):
                raise ValueError("choices must be a non-empty list of non-empty strings")
            if len(set(self.choices)) != len(self.choices):
                raise ValueError(f"choices repeat an entry: {list(self.choices)}")
        problem = compile_problem(self.kind, self.spec_text)
        if problem:
            raise ValueError(problem)
        return self

    # -- constructors ------------------------------------------------------------------------------

    @classmethod
    def from_model(cls, model: type[BaseModel]) -> OutputConstraint:
        return cls(json_schema=model.model_json_schema())  # type: ignore[arg-type]

    @classmethod
    def from_schema(cls, schema: dict[str, Any]) -> OutputConstraint:
        return cls(json_schema=schema)  # type: ignore[arg-type]

    @classmethod
    def from_regex(cls, pattern: str) -> OutputConstraint:
        return cls(regex=pattern)

    @classmethod
    def from_choices(cls, choices: list[str] | tuple[str, ...]) -> OutputConstraint:
        return cls(choices=tuple(choices))

    # -- views -------------------------------------------------------------------------------------

    @property
    def kind(self) -> Literal["json_schema", "regex", "choices"]:
        if self.json_schema is not None:
            return "json_schema"
        return "regex" if self.regex is not None else "choices"

    @property
    def schema_dict(self) -> dict[str, Any]:
        if self.json_schema is None:
            raise ValueError("not a json_schema constraint")
        return json.loads(self.json_schema)

    @property
    def spec_text(self) -> str:
        """What the compilers take: the schema text, the regex, or the choices as a JSON list."""
        if self.json_schema is not None:
            return self.json_schema
        return self.regex if self.regex is not None else json.dumps(list(self.choices or ()))

    def llguidance_grammar(self) -> str:
        """The llguidance grammar (compiled once per distinct constraint)."""
        return _grammar(self.kind, self.spec_text)

    def check(self, text: str) -> Any:
        """The parsed output when ``text`` satisfies the constraint (a JSON value, or the text itself);
        raises ``ValueError`` saying why not. Truncated JSON from a run that hit ``max_tokens`` fails here."""
        if self.kind == "choices":
            if text not in (self.choices or ()):
                raise ValueError(f"{text[:40]!r} is not one of {list(self.choices or ())}")
            return text
        if self.kind == "regex":
            if re.fullmatch(self.regex or "", text) is None:
                raise ValueError(f"output does not match /{self.regex}/")
            return text
        try:
            value = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ValueError(f"not JSON ({exc.msg} at position {exc.pos})") from None
        errors = sorted(_validator(self.json_schema or "").iter_errors(value), key=lambda e: list(e.path))
        if errors:
            where = "/".join(str(p) for p in errors[0].path) or "(root)"
            raise ValueError(f"violates the schema at {where}: {errors[0].message[:120]}")
        return value

    def parse(self, text: str) -> Any | None:
        """Like ``check`` but None instead of an error (for counting parse failures)."""
        try:
            return self.check(text)
        except ValueError:
            return None


def compile_problem(kind: str, spec: str) -> str | None:
    """Why a constraint cannot be compiled (one line), or None when llguidance compiles it."""
    try:
        _grammar(kind, spec)
    except ConstraintError as exc:
        return str(exc)
    return None


@lru_cache(maxsize=256)
def _grammar(kind: str, spec: str) -> str:
    import jsonschema
    import llguidance

    if kind == "json_schema":
        try:
            jsonschema.validators.validator_for(json.loads(spec)).check_schema(json.loads(spec))
        except jsonschema.SchemaError as exc:
            where = "/".join(str(p) for p in exc.path) or "(root)"
            raise ConstraintError(f"json_schema is not a valid JSON Schema at {where}: {exc.message[:160]}") from None
        grammar = llguidance.LLMatcher.grammar_from_json_schema(spec, defaults={"whitespace_flexible": False})
    elif kind == "regex":
        grammar = llguidance.LLMatcher.grammar_from_regex(spec)
    else:
        grammar = llguidance.grammar_from("choice", spec)
    problem = llguidance.LLMatcher.validate_grammar(grammar)
    if problem:
        first = " ".join(problem.split())  # the compiler's message spans lines; a config error is one line
        raise ConstraintError(f"{kind} cannot be compiled for constrained decoding: {first[:240]}")
    return grammar


@lru_cache(maxsize=256)
def _validator(schema_text: str) -> Any:
    import jsonschema

    schema = json.loads(schema_text)
    return jsonschema.validators.validator_for(schema)(schema)


# ---------------------------------------------------------------------------------------------------
# Reusable schemas


def final_answer_constraint(answer: Literal["number", "integer", "string"] = "string", *,
                            choices: list[str] | None = None, reasoning_chars: int = 400,
                            answer_chars: int = 80) -> OutputConstraint:
    """``{"reasoning": "...", "final_answer": ...}`` for answer-checker families (STaR, ReST-EM): the
    model may think first (bounded, so ``max_tokens`` is enough), and the checker reads one field instead
    of guessing which number in the text is the answer. ``choices`` makes the answer an enum."""
    if choices:
        answer_schema: dict[str, Any] = {"type": "string", "enum": list(choices)}
    elif answer == "string":
        answer_schema = {"type": "string", "minLength": 1, "maxLength": answer_chars}
    else:
        answer_schema = {"type": answer}
    return OutputConstraint.from_schema({
        "type": "object",
        "properties": {"reasoning": {"type": "string", "maxLength": reasoning_chars}, "final_answer": answer_schema},
        "required": ["reasoning", "final_answer"], "additionalProperties": False})


def parse_final_answer(text: str, constraint: OutputConstraint) -> Any | None:
    """The ``final_answer`` of an output made under ``final_answer_constraint``, or None if it violates it."""
    value = constraint.parse(text)
    return None if value is None else value["final_answer"]
