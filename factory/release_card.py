"""The dataset card of a release: YAML metadata the Hub and `datasets` read, and a body people read."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pyarrow as pa

if TYPE_CHECKING:
    from factory.releases import Gathered, ReleaseSpec

SPLIT = "train"


class CardError(ValueError):
    """A release whose columns cannot be described in a dataset card."""


def _feature(t: pa.DataType) -> dict[str, Any]:
    """The `datasets` YAML form of one column type (as ``Features._to_yaml_list`` writes it)."""
    if pa.types.is_list(t):
        inner = _feature(t.value_type)
        if set(inner) == {"struct"}:  # a list of records (chat messages): `list:` holds the fields directly
            return {"list": inner["struct"]}
        return {"list": inner["dtype"]} if set(inner) == {"dtype"} else {"list": inner}
    if pa.types.is_struct(t):
        return {"struct": [{"name": f.name, **_feature(f.type)} for f in t]}
    names = {pa.string(): "string", pa.int64(): "int64", pa.int32(): "int32", pa.float64(): "float64",
             pa.float32(): "float32", pa.bool_(): "bool", pa.binary(): "binary", pa.null(): "null"}
    if t not in names:
        raise CardError(f"column type {t} cannot be described in a dataset card")
    return {"dtype": names[t]}


def size_category(n: int) -> str:
    for limit, label in ((1_000, "n<1K"), (10_000, "1K<n<10K"), (100_000, "10K<n<100K"),
                         (1_000_000, "100K<n<1M"), (10_000_000, "1M<n<10M"), (100_000_000, "10M<n<100M"),
                         (1_000_000_000, "100M<n<1B")):
        if n < limit:
            return label
    return "1B<n<10B"


def card_metadata(name: str, spec: ReleaseSpec, configs: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """The card's YAML header: what the Hub and `datasets` read to find configs, splits and features."""
    total = sum(c["rows"] for c in configs.values())
    return {
        "pretty_name": name,
        "license": spec.license,
        "language": ["en"],
        "task_categories": ["text-generation"],
        "size_categories": [size_category(total)],
        "tags": list(dict.fromkeys(["synthetic", "dataset-factory", *spec.tags])),
        "configs": [{"config_name": c, "data_files": [{"split": SPLIT, "path": info["paths"]}],
                     **({"default": True} if c == "sft" else {})} for c, info in configs.items()],
        "dataset_info": [{"config_name": c,
                          "features": [{"name": n, **_feature(t)} for n, t in zip(info["schema"].names,
                                                                                 info["schema"].types, strict=True)],
                          "splits": [{"name": SPLIT, "num_bytes": info["num_bytes"], "num_examples": info["rows"]}],
                          "download_size": info["download_size"], "dataset_size": info["num_bytes"]}
                         for c, info in configs.items()],
    }


def _md_table(rows: list[list[Any]], header: list[str]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(v).replace("|", "\\|") for v in row) + " |" for row in rows]
    return "\n".join(lines)


def card_body(name: str, version: str, spec: ReleaseSpec, g: Gathered, configs: dict[str, dict[str, Any]],
              parents: list[str]) -> str:
    """The readable part of the card: how it was made, what is in it, and what it is (not) for."""
    parts = [f"# {name} {version}", "",
             spec.description or "Synthetic instruction data made by the dataset factory: a model invented tasks "
             "(self-instruct), answered them (self-label) and the factory filtered, deduplicated and scored them.",
             "", "## Configs", "",
             _md_table([[c, info["rows"], ", ".join(info["schema"].names)] for c, info in configs.items()],
                       ["config", "rows", "columns"]),
             "", "```python", "from datasets import load_dataset",
             f'ds = load_dataset("ORG/{name}", "sft", revision="{version}")  # or a local release folder',
             "```", "", "## How it was made", "",
             f"- runs: {', '.join(g.run_ids)} (pipeline config hash `{g.config_hash[:12]}`)",
             f"- models: {', '.join(g.model_ids) or 'none (human-written only)'}",
             f"- prompt templates: {', '.join(g.template_ids) or 'none'}",
             f"- parent releases: {', '.join(parents) or 'none'}", "", "### Stages and their funnel", "",
             _md_table([[f["stage"], f["kind"], f["records_in"], f["records_out"], f["records_rejected"]]
                        for f in g.funnel], ["stage", "kind", "in", "out", "rejected"]) if g.funnel else "(none)"]
    if g.scores is not None and len(g.scores):
        s = g.scores
        qs = [float(s.quantile(q)) for q in (0.0, 0.1, 0.5, 0.9, 1.0)]
        parts += ["", f"## Score distribution (`{g.score_column}`)", "",
                  _md_table([[len(s), f"{float(s.mean()):.3f}", *(f"{q:.3f}" for q in qs)]],
                            ["n", "mean", "min", "p10", "p50", "p90", "max"])]
        if spec.min_score is not None:
            parts += ["", f"Only samples scoring at least {spec.min_score} are included."]
    parts += ["", "## Intended use and limits", "",
              "- Intended for supervised fine-tuning (`sft`) and preference tuning (`preference`, when present) "
              "of language models, and for research on synthetic data.",
              "- Every row was written by a model and checked only by automatic filters and judges: expect "
              "factual errors, shallow answers and the biases of the generating model. Do not use it as a "
              "source of facts or for evaluation.",
              "- Lineage columns (`sample_id`, `task_id`, `run_id`, `producer`, `template_id`, `gen_params`) "
              "trace every row back to the factory's warehouse.",
              "- `manifest.json` lists the sha256 of every file; `factory.releases.open` verifies them.", ""]
    return "\n".join(parts)
