"""Facts a build records in the signed index (``airgap-bundle/2``) for the GPU checks.

The install preflight runs before any payload byte is read (a bundle from stdin cannot
seek back to its ``config.json``), so what it needs is measured at build time and
signed with the index:

* :class:`ModelFacts`: the exact tensor bytes per dtype from the safetensors headers,
  and the model's shape from ``config.json`` (or Mistral's ``params.json``), with the
  markers that make a plain KV-cache estimate wrong (sliding window, MLA, hybrid);
* :class:`ImageCuda`: the vLLM image's CUDA requirement from its config's environment.

Every field is optional: what could not be read is left out (never written as null) and
said in ``notes``. The models are strict (unknown keys refused) and serialise to the
exact bytes they were parsed from, like the rest of the index.
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, SerializerFunctionWrapHandler, model_serializer

Count = Annotated[int, Field(ge=0)]
Positive = Annotated[int, Field(ge=1)]
Short = Annotated[str, Field(max_length=200)]
MAX_NOTES = 32


class _Fact(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, defer_build=True)

    @model_serializer(mode="wrap")
    def _omit_unset(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        data: dict[str, Any] = handler(self)
        return {k: v for k, v in data.items() if v is not None and not (k == "notes" and not v)}


class WeightFacts(_Fact):
    """What the safetensors headers say: exact, since each tensor's byte range is given."""

    files: tuple[Short, ...]  # the weight files vLLM loads, relative to the model directory
    bytes: Count  # the sum of every tensor's bytes (headers and padding not counted)
    params: Count  # elements
    dtypes: dict[Short, Count]  # bytes per safetensors dtype (BF16, F8_E4M3, I32, ...)


class ModelFacts(_Fact):
    """The model as vLLM will see it: weights, shape and attention markers."""

    config: Short | None = None  # the file the shape came from: config.json or params.json
    architecture: Short | None = None
    model_type: Short | None = None
    dtype: Short | None = None  # torch_dtype in the config (bfloat16, float16, ...)
    layers: Positive | None = None
    attention_heads: Positive | None = None
    kv_heads: Positive | None = None
    head_dim: Positive | None = None  # as configured; absent: hidden_size / attention_heads
    hidden_size: Positive | None = None
    max_position_embeddings: Positive | None = None
    quantization: Short | None = None  # quantization_config.quant_method
    sliding_window: Positive | None = None  # in force (use_sliding_window not false)
    kv_lora_rank: Positive | None = None  # MLA: the KV cache holds a latent, not heads
    hybrid: Short | None = None  # why: a Mamba/linear-attention stack, per-layer types
    text_config: bool | None = None  # the shape is a multimodal model's language part
    weights: WeightFacts | None = None
    notes: tuple[Short, ...] = Field(default=(), max_length=MAX_NOTES)

    @property
    def effective_head_dim(self) -> int | None:
        """head_dim, else hidden_size / attention_heads (what vLLM falls back to)."""
        if self.head_dim is not None:
            return self.head_dim
        if self.hidden_size and self.attention_heads:
            return self.hidden_size // self.attention_heads
        return None


class ImageCuda(_Fact):
    """The image config's CUDA environment, as the NVIDIA Container Toolkit reads it."""

    require: Annotated[str, Field(max_length=4096)] | None = None  # NVIDIA_REQUIRE_CUDA
    version: Short | None = None  # CUDA_VERSION
    disable_require: Short | None = None  # NVIDIA_DISABLE_REQUIRE, as set
