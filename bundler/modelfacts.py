"""Measure a model and an image at build time: the facts the GPU preflight reads later.

Weights: each ``.safetensors`` file starts with an 8-byte little-endian header length
and a JSON header that gives every tensor's dtype, shape and byte range. Only that
header is read (bounded like safetensors itself: at most 100 MB), never tensor data, and
it is checked as safetensors checks it (ranges in bounds, back to back, covering the
data exactly), so the byte counts are exact. Which files count is what vLLM loads:
``*.safetensors`` in the model directory, narrowed to the shards that
``model.safetensors.index.json`` names; ``consolidated*.safetensors`` with
``--load-format mistral``.

Shape: ``config.json`` (the language part of a multimodal config), or Mistral's
``params.json`` with ``--config-format mistral`` or when there is no ``config.json``.

A file that cannot be read as claimed does not stop the build: the fact is left out and
a note says why, so the preflight reports "cannot estimate" instead of a wrong number.
"""

from __future__ import annotations

import json
import logging
import os
import re
import struct
from collections.abc import Mapping
from fnmatch import fnmatchcase
from typing import Any

from bundler.bundle.index import BLOB_PREFIX, ImageEntry
from bundler.facts import ImageCuda, ModelFacts, WeightFacts
from bundler.hashing import FileRange
from bundler.manifest import Manifest

logger = logging.getLogger(__name__)

MAX_HEADER_BYTES = 100_000_000  # safetensors' own limit on the header
MAX_CONFIG_BYTES = 4 * 1024 * 1024  # config.json, params.json, the shard index
MAX_IMAGE_CONFIG_BYTES = 16 * 1024 * 1024
MAX_JSON_DEPTH = 64
SHARD_INDEX = "model.safetensors.index.json"

# Bits per element of each safetensors dtype (safetensors' Dtype enum).
DTYPE_BITS = {
    "BOOL": 8, "U8": 8, "I8": 8, "F8_E5M2": 8, "F8_E4M3": 8, "F8_E8M0": 8,
    "F4": 4, "F6_E2M3": 6, "F6_E3M2": 6,
    "I16": 16, "U16": 16, "F16": 16, "BF16": 16,
    "I32": 32, "U32": 32, "F32": 32,
    "I64": 64, "U64": 64, "F64": 64, "C64": 64,
}  # fmt: skip
_DTYPE_NAME = re.compile(r"^[A-Z0-9_]{1,16}$")
_STRING = re.compile(rb'"(?:[^"\\]|\\.)*"', re.DOTALL)
_BRACKET = re.compile(rb"[\[\]{}]")

# Configs whose layers are not all full attention: Mamba/SSM, linear attention, hybrids.
HYBRID_MODEL_TYPES = frozenset(
    {
        "jamba", "bamba", "zamba", "zamba2", "falcon_h1", "nemotron_h", "granitemoehybrid",
        "qwen3_next", "lfm2", "minimax", "minimax_text_01", "mamba", "mamba2", "plamo2",
    }
)  # fmt: skip
HYBRID_KEYS = ("layers_block_type", "hybrid_override_pattern", "attn_layer_indices",
               "attn_layer_period", "full_attn_idxs", "linear_attn_config")  # fmt: skip
FULL_ATTENTION_TYPES = frozenset({"full_attention", "attention", "global_attention"})
SLIDING_TYPES = frozenset({"sliding_attention", "local_attention", "chunked_attention"})

Source = FileRange | bytes


class FactError(ValueError):
    """A file is not what its name says (a note, not a build failure)."""


def _read(src: Source, offset: int, n: int) -> bytes:
    size = len(src) if isinstance(src, bytes) else src.size
    n = max(0, min(n, size - offset))
    if isinstance(src, bytes):
        return src[offset : offset + n]
    with open(src.path, "rb", buffering=0) as f:
        data = os.pread(f.fileno(), n, src.offset + offset)
    if len(data) != n:
        raise FactError("shorter than expected")
    return data


def _size(src: Source) -> int:
    return len(src) if isinstance(src, bytes) else src.size


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in pairs:
        if k in out:
            raise FactError(f"duplicate key {k[:60]!r}")
        out[k] = v
    return out


def bounded_json(data: bytes) -> Any:
    """JSON with at most :data:`MAX_JSON_DEPTH` levels and no duplicate keys.

    Raises:
        FactError: not UTF-8 JSON, nested too deep, or a key given twice.
    """
    depth = deepest = 0
    for m in _BRACKET.finditer(_STRING.sub(b'""', data)):
        depth += 1 if m.group() in b"[{" else -1
        deepest = max(deepest, depth)
    if deepest > MAX_JSON_DEPTH:
        raise FactError(f"JSON nested deeper than {MAX_JSON_DEPTH} levels")
    try:
        return json.loads(data.decode("utf-8"), object_pairs_hook=_no_duplicates)
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as e:
        raise FactError(f"not valid JSON: {e}") from e


def _small_json(src: Source, limit: int = MAX_CONFIG_BYTES) -> Any:
    if _size(src) > limit:
        raise FactError(f"larger than {limit} bytes")
    return bounded_json(_read(src, 0, limit))


# -- safetensors ---------------------------------------------------------------------------


def safetensors_header(src: Source) -> dict[str, tuple[str, int, int]]:
    """Every tensor of one file: name -> (dtype, elements, bytes). Reads only the header.

    Raises:
        FactError: not a safetensors file, or a header safetensors itself would refuse.
    """
    size = _size(src)
    if size < 8:
        raise FactError("not a safetensors file (shorter than 8 bytes)")
    (n,) = struct.unpack("<Q", _read(src, 0, 8))
    if n > MAX_HEADER_BYTES:
        raise FactError(f"not a safetensors file (header length {n} > {MAX_HEADER_BYTES})")
    if 8 + n > size:
        raise FactError(f"not a safetensors file (header length {n} beyond the file's end)")
    raw = _read(src, 8, n)
    if not raw.startswith(b"{"):
        raise FactError("not a safetensors file (the header is not a JSON object)")
    header = bounded_json(raw)
    if not isinstance(header, dict):
        raise FactError("not a safetensors file (the header is not a JSON object)")
    data_len = size - 8 - n
    tensors: dict[str, tuple[str, int, int]] = {}
    spans: list[tuple[int, int, str]] = []
    for name, info in header.items():
        if name == "__metadata__":
            if not isinstance(info, dict) or not all(isinstance(v, str) for v in info.values()):
                raise FactError("__metadata__ must map strings to strings")
            continue
        what = f"tensor {name[:80]!r}"
        if not isinstance(info, dict) or set(info) != {"dtype", "shape", "data_offsets"}:
            raise FactError(f"{what}: needs exactly dtype, shape and data_offsets")
        dtype, shape, offsets = info["dtype"], info["shape"], info["data_offsets"]
        if not isinstance(dtype, str) or not _DTYPE_NAME.match(dtype):
            raise FactError(f"{what}: bad dtype")
        if not isinstance(shape, list) or not all(_count(d) for d in shape):
            raise FactError(f"{what}: shape must be a list of non-negative integers")
        if (
            not isinstance(offsets, list)
            or len(offsets) != 2
            or not all(_count(o) for o in offsets)
            or not offsets[0] <= offsets[1] <= data_len
        ):
            raise FactError(f"{what}: data_offsets out of the file")
        numel = 1
        for d in shape:
            numel *= d
        span = offsets[1] - offsets[0]
        bits = DTYPE_BITS.get(dtype)
        if bits is not None and numel * bits != span * 8:
            raise FactError(f"{what}: {span} bytes do not hold {numel} x {dtype}")
        tensors[name] = (dtype, numel, span)
        spans.append((offsets[0], offsets[1], name))
    end = 0
    for begin, stop, name in sorted(spans):
        if begin != end:
            raise FactError(f"tensor {name[:80]!r}: data_offsets overlap or leave a gap")
        end = stop
    if end != data_len:
        raise FactError(f"the tensors cover {end} of the {data_len} data bytes")
    return tensors


def _count(v: object) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= 0


def weight_files(names: set[str], load_format: str | None) -> list[str]:
    """The safetensors files in the model directory itself that vLLM globs for (it does not
    look in sub-directories); :func:`weights` narrows them by the shard index."""
    pattern = "consolidated*.safetensors" if load_format == "mistral" else "*.safetensors"
    return sorted(n for n in names if "/" not in n and fnmatchcase(n, pattern))


def _shards(index_doc: object) -> set[str]:
    weight_map = index_doc.get("weight_map") if isinstance(index_doc, dict) else None
    if not isinstance(weight_map, dict) or not all(isinstance(v, str) for v in weight_map.values()):
        raise FactError("no weight_map of tensor names to files")
    return set(weight_map.values())


def weights(
    files: Mapping[str, Source], load_format: str | None
) -> tuple[WeightFacts | None, list[str]]:
    """Exact tensor bytes of the files vLLM loads (None, with notes, when not known)."""
    candidates = weight_files(set(files), load_format)
    if load_format != "mistral" and SHARD_INDEX in files:
        try:
            listed = _shards(_small_json(files[SHARD_INDEX]))
        except FactError as e:
            return None, [f"{SHARD_INDEX}: {e}"]
        missing = sorted(listed - set(files))
        if missing:
            return None, [f"{SHARD_INDEX} names shards the bundle lacks: {', '.join(missing[:3])}"]
        candidates = sorted(n for n in candidates if n in listed)
    if not candidates:
        others = sorted(n for n in files if n.endswith((".bin", ".pt", ".gguf", ".pth")))
        why = f"weights in another format ({others[0]})" if others else "no .safetensors file"
        return None, [f"weights not measured: {why}"]
    total = params = 0
    dtypes: dict[str, int] = {}
    for name in candidates:
        try:
            tensors = safetensors_header(files[name])
        except FactError as e:
            return None, [f"{name}: {e}"]
        for dtype, numel, span in tensors.values():
            dtypes[dtype] = dtypes.get(dtype, 0) + span
            total += span
            params += numel
    return WeightFacts(files=tuple(candidates), bytes=total, params=params, dtypes=dtypes), []


# -- config.json / params.json ----------------------------------------------------------------


def _int(d: Mapping[str, Any], *keys: str) -> int | None:
    for k in keys:
        v = d.get(k)
        if isinstance(v, int) and not isinstance(v, bool) and v > 0:
            return v
    return None


def _str(d: Mapping[str, Any], *keys: str) -> str | None:
    for k in keys:
        v = d.get(k)
        if isinstance(v, str) and 0 < len(v) <= 200:
            return v
    return None


def shape_from_config(doc: Mapping[str, Any]) -> dict[str, Any]:
    """The fields of :class:`ModelFacts` that a Hugging Face ``config.json`` gives."""
    archs = doc.get("architectures")
    first = archs[0] if isinstance(archs, list) and archs else None
    out: dict[str, Any] = {
        "config": "config.json",
        "architecture": first if isinstance(first, str) and len(first) <= 200 else None,
        "model_type": _str(doc, "model_type"),
    }
    text = doc
    for key in ("text_config", "llm_config", "language_config"):
        if isinstance(doc.get(key), dict):
            text, out["text_config"] = doc[key], True
            break
    heads = _int(text, "num_attention_heads", "n_head", "num_heads")
    kv = _int(text, "num_key_value_heads", "n_head_kv", "num_kv_heads", "multi_query_group_num")
    if kv is None and text.get("multi_query") is True:
        kv = 1
    quant = text.get("quantization_config") or doc.get("quantization_config")
    out |= {
        "dtype": _str(text, "torch_dtype", "dtype") or _str(doc, "torch_dtype", "dtype"),
        "layers": _int(text, "num_hidden_layers", "n_layer", "num_layers", "n_layers"),
        "attention_heads": heads,
        "kv_heads": kv or heads,
        "head_dim": _int(text, "head_dim"),
        "hidden_size": _int(text, "hidden_size", "n_embd", "d_model"),
        "max_position_embeddings": _int(
            text, "max_position_embeddings", "n_positions", "max_seq_len"
        ),
        "quantization": _str(quant, "quant_method") if isinstance(quant, dict) else None,
        "kv_lora_rank": _int(text, "kv_lora_rank"),
    }
    window = _int(text, "sliding_window")
    if window and text.get("use_sliding_window") is not False:
        out["sliding_window"] = window
    out["hybrid"] = _hybrid(text, out["model_type"] or "", out["architecture"] or "")
    return out


def _hybrid(text: Mapping[str, Any], model_type: str, architecture: str) -> str | None:
    text_type = _str(text, "model_type") or model_type
    if text_type in HYBRID_MODEL_TYPES:
        return f"model_type {text_type}"
    if re.search(r"Mamba|Jamba|Zamba|Bamba|Hybrid|FalconH1|NemotronH", architecture):
        return f"architecture {architecture}"
    for key in HYBRID_KEYS:
        if text.get(key) not in (None, [], ""):
            return f"config key {key}"
    types = text.get("layer_types")
    if isinstance(types, list):
        other = sorted({str(t) for t in types} - FULL_ATTENTION_TYPES - SLIDING_TYPES)
        if other:
            return f"layer_types has {', '.join(other)[:100]}"
        kinds = {str(t) for t in types}
        if kinds & SLIDING_TYPES and kinds & FULL_ATTENTION_TYPES:
            return "layer_types mixes sliding-window and full attention"
    return None


def shape_from_params(doc: Mapping[str, Any]) -> dict[str, Any]:
    """The same from Mistral's ``params.json`` (what ``--config-format mistral`` reads)."""
    heads = _int(doc, "n_heads")
    window = _int(doc, "sliding_window")
    quant = doc.get("quantization")
    qmethod = _str(quant, "qformat_weight", "quant_method") if isinstance(quant, dict) else None
    return {
        "config": "params.json",
        "model_type": "mistral",
        "layers": _int(doc, "n_layers"),
        "attention_heads": heads,
        "kv_heads": _int(doc, "n_kv_heads") or heads,
        "head_dim": _int(doc, "head_dim"),
        "hidden_size": _int(doc, "dim"),
        "max_position_embeddings": _int(doc, "max_seq_len", "max_position_embeddings"),
        "sliding_window": window,
        "quantization": qmethod,
        "kv_lora_rank": _int(doc, "kv_lora_rank"),
        "text_config": True if isinstance(doc.get("vision_encoder"), dict) else None,
    }


def shape(
    files: Mapping[str, Source], config_format: str | None
) -> tuple[dict[str, Any], list[str]]:
    """Shape fields from the config file vLLM reads, and notes."""
    order = ["config.json", "params.json"]
    if config_format == "mistral":
        order.reverse()
    for name in order:
        if name not in files:
            continue
        try:
            doc = _small_json(files[name])
        except FactError as e:
            return {}, [f"{name}: {e}"]
        if not isinstance(doc, dict):
            return {}, [f"{name}: not a JSON object"]
        fields = shape_from_params(doc) if name == "params.json" else shape_from_config(doc)
        missing = [k for k in ("layers", "attention_heads", "hidden_size") if fields.get(k) is None]
        notes = [f"{name} does not give {', '.join(missing)}"] if missing else []
        return fields, notes
    return {}, ["no config.json or params.json in the model directory"]


def model_facts(files: Mapping[str, Source], m: Manifest) -> ModelFacts:
    """Facts of the model whose files (relative to its directory) are ``files``."""
    fields, notes = shape(files, m.serve.config_format)
    measured, more = weights(files, m.serve.load_format)
    notes = [n[:200] for n in (*notes, *more)]
    for note in notes:
        logger.warning("model facts: %s", note)
    return ModelFacts(weights=measured, notes=tuple(notes[:32]), **fields)


# -- the image's CUDA requirement -----------------------------------------------------------


CUDA_ENV = {"NVIDIA_REQUIRE_CUDA": "require", "CUDA_VERSION": "version",
            "NVIDIA_DISABLE_REQUIRE": "disable_require"}  # fmt: skip


def image_cuda(config: Source) -> ImageCuda | None:
    """The CUDA variables of an image config's environment (None when it sets none)."""
    try:
        doc = _small_json(config, MAX_IMAGE_CONFIG_BYTES)
    except FactError as e:
        logger.warning("image config: %s", e)
        return None
    inner = doc.get("config") if isinstance(doc, dict) else None
    env = inner.get("Env") if isinstance(inner, dict) else None
    found: dict[str, str] = {}
    for item in env if isinstance(env, list) else []:
        if isinstance(item, str) and "=" in item:
            key, _, value = item.partition("=")
            if key in CUDA_ENV and len(value) <= (4096 if key == "NVIDIA_REQUIRE_CUDA" else 200):
                found[CUDA_ENV[key]] = value
    return ImageCuda(**found) if found else None


# -- both, for a build -------------------------------------------------------------------------


def measure(
    m: Manifest, sources: Mapping[str, Source], images: list[ImageEntry]
) -> tuple[ModelFacts | None, list[ImageEntry]]:
    """The model's facts and the images with their CUDA requirement, from the payload.

    ``sources`` maps bundle paths to where their bytes are now.
    """
    prefix = f"models/{m.model.served_name}/"
    files = {p[len(prefix) :]: s for p, s in sources.items() if p.startswith(prefix)}
    facts = model_facts(files, m) if files else None
    out = []
    for img in images:
        config = sources.get(BLOB_PREFIX + img.config_digest.removeprefix("sha256:"))
        cuda = image_cuda(config) if config is not None else None
        out.append(img.model_copy(update={"cuda": cuda}) if cuda else img)
    return facts, out
