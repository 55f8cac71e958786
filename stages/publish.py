"""Publish: the run's kept records become an immutable, versioned release (see ``factory.releases``).

The last stage of a pipeline. Publishing the same content again is a no-op, so a resumed or repeated
run does not mint a new version; a version given explicitly that exists with other content stops the run.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from factory.context import StageContext
from factory.names import Name
from factory.releases import ReleaseSpec, publish
from factory.stage import StageConfig, StageOutput, register


class PublishConfig(StageConfig, ReleaseSpec):
    kind: Literal["publish"] = "publish"
    dataset: Name | None = Field(None, description="release name (default: the pipeline's name)")


@register(PublishConfig)
def run(ctx: StageContext, cfg: PublishConfig) -> StageOutput:
    wh = ctx.warehouse
    name = cfg.dataset
    if name is None:
        with wh.connect(read_only=True) as con:
            row = con.execute("SELECT pipeline FROM runs WHERE run_id = ?", [ctx.run_id]).fetchall()
        name = row[0][0] if row else ctx.run_id
    spec = ReleaseSpec(**cfg.model_dump(include=set(ReleaseSpec.model_fields)))
    result = publish(wh, name, [ctx.run_id], spec, stages=ctx.earlier_stages)
    verb = "published" if result.created else "unchanged:"
    ctx.log(f"{verb} {result.ref} ({', '.join(f'{c} {n} rows' for c, n in result.rows.items())}) at {result.path}")
    return StageOutput(records_in=sum(result.rows.values()), kept=sum(result.rows.values()),
                       metrics={"release": result.ref, "created": result.created, "path": str(result.path),
                                "content_hash": result.content_hash, "rows": result.rows})
