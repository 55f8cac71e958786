"""vLLM's offline engine on GPUs: ``LLM.chat`` with one ``SamplingParams`` per request. Optional extra."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar, Literal

from pydantic import Field

from factory.backends.base import (
    BackendConfig,
    BackendUnavailable,
    ChatRequest,
    Completion,
    register_backend,
)
from factory.structured import OutputConstraint


class VLLMConfig(BackendConfig):
    kind: Literal["vllm"] = "vllm"
    model: str = Field(description="a local model folder or hub id already present on the GPU machine")
    batch_size: int = Field(256, ge=1, description="requests handed to vLLM per checkpoint batch")
    tensor_parallel_size: int = Field(1, ge=1)
    gpu_memory_utilization: float = Field(0.9, gt=0, le=1)
    max_model_len: int | None = None
    dtype: str = "auto"
    engine_args: dict[str, Any] = Field(default_factory=dict, description="passed to vllm.LLM as is")

    requires: ClassVar[str | None] = "vllm"


class VLLMBackend:
    def __init__(self, config: VLLMConfig):
        try:
            import vllm
        except ImportError:
            raise BackendUnavailable(
                "backend 'vllm' needs vLLM on a GPU machine: pip install 'dataset-factory[vllm]' "
                "(or use backend kind 'transformers' on CPU, or 'openai' against `vllm serve`)") from None
        self._vllm = vllm
        self.model_id = config.model
        self.batch_size = config.batch_size
        self.llm = vllm.LLM(model=config.model, tensor_parallel_size=config.tensor_parallel_size,
                            gpu_memory_utilization=config.gpu_memory_utilization,
                            max_model_len=config.max_model_len, dtype=config.dtype, **config.engine_args)

    @staticmethod
    def _structured(constraint: OutputConstraint | None) -> Any:
        """vLLM's own structured outputs (xgrammar or llguidance inside the engine), vLLM >= 0.12."""
        if constraint is None:
            return None
        try:
            from vllm.sampling_params import StructuredOutputsParams
        except ImportError:
            raise BackendUnavailable("output constraints need vLLM >= 0.12 (StructuredOutputsParams): "
                                     "pip install -U 'dataset-factory[vllm]', or turn the stage's `structured` off"
                                     ) from None
        if constraint.kind == "json_schema":
            return StructuredOutputsParams(json=constraint.schema_dict, disable_any_whitespace=True)
        if constraint.kind == "regex":
            return StructuredOutputsParams(regex=constraint.regex)
        return StructuredOutputsParams(choice=list(constraint.choices or ()))

    def generate(self, requests: Sequence[ChatRequest]) -> list[Completion]:
        params = [self._vllm.SamplingParams(max_tokens=r.params.max_tokens, temperature=r.params.temperature,
                                            top_p=r.params.top_p, seed=r.params.seed,
                                            structured_outputs=self._structured(r.params.constraint))
                  for r in requests]
        outputs = self.llm.chat([r.message_dicts() for r in requests], sampling_params=params, use_tqdm=False)
        results = []
        for out in outputs:
            best = out.outputs[0]
            finish = "length" if best.finish_reason == "length" else "stop"
            results.append(Completion(best.text.strip(), finish, len(out.prompt_token_ids or []),
                                      len(best.token_ids)))
        return results


@register_backend(VLLMConfig)
def load(config: VLLMConfig) -> VLLMBackend:
    return VLLMBackend(config)
