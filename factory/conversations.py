"""The conversational columns of a release: chat turns in the form TRL and Hub users expect.

A release keeps its plain string columns (``instruction``/``input``/``output``; ``prompt``/``chosen``/
``rejected``) for the consumers that read them today, and adds the same rows as chat turns
(``[{"role": "user", "content": …}, {"role": "assistant", "content": …}]``):

- ``sft``: ``messages`` — what ``SFTTrainer`` and most chat-tuning scripts read as they are;
- ``preference``: ``prompt_messages`` (the user turn), ``chosen_messages`` and ``rejected_messages``
  (one assistant turn each): TRL's conversational preference format under names that do not clash with
  the string columns (rename them to ``prompt``/``chosen``/``rejected`` for ``DPOTrainer``).

The user turn is exactly what the pipeline asked the model (``records.task_prompt``: the instruction,
then the input after a blank line), so a model trained on a release sees the prompts it will be asked.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import polars as pl

from factory.records import task_prompt

SFT_MESSAGE_COLUMNS = ["messages"]
PREFERENCE_MESSAGE_COLUMNS = ["prompt_messages", "chosen_messages", "rejected_messages"]


def turn(role: str, content: pl.Expr) -> pl.Expr:
    """One chat message as a struct ``{role, content}``."""
    return pl.struct(pl.lit(role, pl.String).alias("role"), content.cast(pl.String).alias("content"))


def user_text(instruction: str = "instruction", input_col: str = "input") -> pl.Expr:
    """Vectorised ``records.task_prompt``: the instruction, then the input after a blank line when there is one."""
    extra = pl.col(input_col).fill_null("")
    return pl.when(extra != "").then(pl.col(instruction) + "\n\n" + extra).otherwise(pl.col(instruction))


def sft_messages(df: pl.DataFrame) -> pl.DataFrame:
    """``df`` (instruction, input, output) with a ``messages`` column: the user turn and the answer."""
    return df.with_columns(pl.concat_list([turn("user", user_text()), turn("assistant", pl.col("output"))])
                           .alias("messages"))


def preference_messages(df: pl.DataFrame) -> pl.DataFrame:
    """``df`` (prompt, chosen, rejected) with the same three as one-turn conversations."""
    return df.with_columns(pl.concat_list([turn("user", pl.col("prompt"))]).alias("prompt_messages"),
                           pl.concat_list([turn("assistant", pl.col("chosen"))]).alias("chosen_messages"),
                           pl.concat_list([turn("assistant", pl.col("rejected"))]).alias("rejected_messages"))


def messages_of_row(row: Mapping[str, Any]) -> list[dict[str, str]]:
    """A release row's conversation: its ``messages``, or one built from instruction/input/output.

    Releases published before the conversational columns existed have only the strings; they stay
    trainable through this.
    """
    messages = row.get("messages")
    if messages:
        return [{"role": m["role"], "content": m["content"]} for m in messages]
    return [{"role": "user", "content": task_prompt(row)}, {"role": "assistant", "content": row["output"]}]


def preference_of_row(row: Mapping[str, Any]) -> dict[str, list[dict[str, str]]]:
    """A preference row as TRL's conversational ``prompt``/``chosen``/``rejected``."""
    if row.get("prompt_messages") and row.get("chosen_messages") and row.get("rejected_messages"):
        return {k: [{"role": m["role"], "content": m["content"]} for m in row[f"{k}_messages"]]
                for k in ("prompt", "chosen", "rejected")}
    return {"prompt": [{"role": "user", "content": row["prompt"]}],
            "chosen": [{"role": "assistant", "content": row["chosen"]}],
            "rejected": [{"role": "assistant", "content": row["rejected"]}]}
