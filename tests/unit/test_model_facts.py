"""Model facts: safetensors headers (exact bytes, only the header read, hostile headers
refused), config.json / params.json shapes and markers, and their place in the signed
index (``airgap-bundle/2``: round-trips byte for byte, unset keys omitted)."""

from __future__ import annotations

import json
import struct
import time
from pathlib import Path
from typing import Any

import pytest
from test_index import _entry, _index

from bundler import canonical
from bundler.bundle.index import Index, parse_index
from bundler.errors import BundleError
from bundler.facts import ModelFacts
from bundler.hashing import FileRange
from bundler.manifest import parse_manifest
from bundler.modelfacts import (
    FactError,
    image_cuda,
    model_facts,
    safetensors_header,
    shape_from_config,
    shape_from_params,
)
from devkit.demo_data import TINY_CONFIG

BITS = {"BF16": 16, "F32": 32, "F8_E4M3": 8, "I32": 32, "U8": 8, "F4": 4}


def safetensors(tensors: dict[str, tuple[str, list[int]]], pad: int = 0) -> bytes:
    """A real safetensors file: header, then each tensor's bytes back to back."""
    header: dict[str, Any] = {"__metadata__": {"format": "pt"}}
    offset = 0
    for name, (dtype, shape) in tensors.items():
        n = 1
        for d in shape:
            n *= d
        size = n * BITS[dtype] // 8
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [offset, offset + size]}
        offset += size
    raw = json.dumps(header).encode() + b" " * pad
    return struct.pack("<Q", len(raw)) + raw + bytes(offset)


def raw_file(header: bytes, data: int = 0) -> bytes:
    return struct.pack("<Q", len(header)) + header + bytes(data)


def manifest(**serve: Any) -> Any:
    return parse_manifest(
        {
            "apiVersion": "airgap/v1",
            "kind": "Bundle",
            "name": "m",
            "version": 1,
            "model": {"path": "./w", "served_name": "m"},
            "images": {"vllm": "r.example/v:1", "nginx": "r.example/n:1"},
            "serve": serve,
        }
    )


LLAMA = {
    "architectures": ["LlamaForCausalLM"],
    "model_type": "llama",
    "hidden_size": 8192,
    "num_hidden_layers": 80,
    "num_attention_heads": 64,
    "num_key_value_heads": 8,
    "max_position_embeddings": 131072,
    "torch_dtype": "bfloat16",
}


# -- safetensors headers -------------------------------------------------------------------


def test_header_gives_exact_bytes_per_dtype() -> None:
    data = safetensors(
        {
            "embed": ("BF16", [1000, 64]),
            "w8": ("F8_E4M3", [64, 64]),
            "scale": ("F32", [64]),
            "packed": ("I32", [8, 8]),
            "fp4": ("F4", [16, 4]),
        },
        pad=5,
    )
    t = safetensors_header(data)
    assert t["embed"] == ("BF16", 64_000, 128_000)
    assert t["w8"] == ("F8_E4M3", 4096, 4096)
    assert t["fp4"] == ("F4", 64, 32)
    facts = model_facts(
        {"config.json": json.dumps(LLAMA).encode(), "model.safetensors": data}, manifest()
    )
    assert facts.weights is not None
    assert facts.weights.dtypes == {
        "BF16": 128_000,
        "F8_E4M3": 4096,
        "F32": 256,
        "I32": 256,
        "F4": 32,
    }
    assert facts.weights.bytes == len(data) - 8 - struct.unpack("<Q", data[:8])[0]
    assert facts.weights.params == 64_000 + 4096 + 64 + 64 + 64


def test_only_the_header_is_read(tmp_path: Path) -> None:
    """A 64 GiB weight file (sparse) is measured in well under a second: tensor data is never
    read. The file is read in place at an offset, as a FileRange inside a bigger file."""
    tensor = 64 << 30
    header = json.dumps({"w": {"dtype": "U8", "shape": [tensor], "data_offsets": [0, tensor]}})
    blob = struct.pack("<Q", len(header)) + header.encode()
    path = tmp_path / "big.bin"
    with open(path, "wb") as f:
        f.write(b"x" * 100)  # the file starts 100 bytes before the safetensors data
        f.write(blob)
        f.truncate(100 + len(blob) + tensor)
    started = time.monotonic()
    t = safetensors_header(FileRange(path, 100, len(blob) + tensor))
    assert t == {"w": ("U8", tensor, tensor)}
    assert time.monotonic() - started < 1.0


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"\x00" * 7, "shorter than 8 bytes"),
        (struct.pack("<Q", 100_000_001) + b"{}", "header length 100000001 > 100000000"),
        (struct.pack("<Q", 50) + b"{}", "beyond the file's end"),
        (raw_file(b"[1, 2]"), "not a JSON object"),
        (raw_file(b'{"a": 1, "a": 2}'), "duplicate key"),
        (raw_file(b'{"x": ' + b"[" * 70 + b"]" * 70 + b"}"), "nested deeper than 64"),
        (
            raw_file(b'{"w": {"dtype": "BF16", "shape": [2], "data_offsets": [0, 2]}}', 2),
            "do not hold",
        ),
        (
            raw_file(b'{"w": {"dtype": "U8", "shape": [2], "data_offsets": [0, 9]}}', 2),
            "out of the file",
        ),
        (
            raw_file(
                b'{"a": {"dtype": "U8", "shape": [2], "data_offsets": [0, 2]},'
                b' "b": {"dtype": "U8", "shape": [2], "data_offsets": [1, 3]}}',
                3,
            ),
            "overlap or leave a gap",
        ),
        (
            raw_file(b'{"w": {"dtype": "U8", "shape": [2], "data_offsets": [0, 2]}}', 3),
            "cover 2 of the 3",
        ),
        (
            raw_file(b'{"w": {"dtype": "U8", "shape": [-1], "data_offsets": [0, 0]}}'),
            "non-negative",
        ),
        (
            raw_file(b'{"w": {"dtype": "U8", "shape": [1], "data_offsets": [0, 1], "x": 1}}', 1),
            "exactly",
        ),
        (raw_file(b'{"__metadata__": {"k": 1}}'), "__metadata__"),
    ],
)
def test_bad_headers_are_refused(data: bytes, message: str) -> None:
    with pytest.raises(FactError, match=message):
        safetensors_header(data)
    # ...and the build records why, instead of a number
    facts = model_facts(
        {"config.json": json.dumps(LLAMA).encode(), "model.safetensors": data}, manifest()
    )
    assert facts.weights is None
    assert any(n.startswith("model.safetensors: ") and message.split()[0] in n for n in facts.notes)


def test_sharded_model_counts_the_shards_its_index_names() -> None:
    a = safetensors({"a": ("BF16", [10])})
    b = safetensors({"b": ("BF16", [20])})
    stale = safetensors({"old": ("F32", [1000])})
    index = json.dumps({"weight_map": {"a": "model-1.safetensors", "b": "model-2.safetensors"}})
    files = {
        "config.json": json.dumps(LLAMA).encode(),
        "model.safetensors.index.json": index.encode(),
        "model-1.safetensors": a,
        "model-2.safetensors": b,
        "consolidated.safetensors": stale,  # a Mistral-format copy vLLM does not load
        "sub/other.safetensors": stale,  # vLLM does not look in sub-directories
    }
    facts = model_facts(files, manifest())
    assert facts.weights is not None
    assert facts.weights.files == ("model-1.safetensors", "model-2.safetensors")
    assert facts.weights.bytes == 60
    # with --load-format mistral only consolidated*.safetensors count, the index is ignored
    mistral = model_facts(files, manifest(load_format="mistral"))
    assert mistral.weights is not None and mistral.weights.files == ("consolidated.safetensors",)
    # a shard the index names but the bundle lacks: no number, a note
    del files["model-2.safetensors"]
    facts = model_facts(files, manifest())
    assert facts.weights is None
    assert facts.notes == (
        "model.safetensors.index.json names shards the bundle lacks: model-2.safetensors",
    )


def test_weights_in_another_format_are_named() -> None:
    facts = model_facts({"config.json": b"{}", "pytorch_model.bin": b"x"}, manifest())
    assert facts.weights is None
    assert "weights not measured: weights in another format (pytorch_model.bin)" in facts.notes


# -- config.json / params.json ---------------------------------------------------------------


def test_config_shape_and_head_dim_fallback() -> None:
    f = ModelFacts(**shape_from_config(LLAMA))
    assert (f.layers, f.attention_heads, f.kv_heads, f.hidden_size) == (80, 64, 8, 8192)
    assert f.head_dim is None and f.effective_head_dim == 128
    assert f.dtype == "bfloat16" and f.architecture == "LlamaForCausalLM"
    assert f.sliding_window is None and f.hybrid is None and f.kv_lora_rank is None
    mha = ModelFacts(**shape_from_config({**LLAMA, "num_key_value_heads": None}))
    assert mha.kv_heads == 64  # no GQA: every head has its own K and V


def test_markers_that_make_the_kv_formula_wrong() -> None:
    qwen = shape_from_config({**LLAMA, "sliding_window": 131072, "use_sliding_window": False})
    assert qwen.get("sliding_window") is None  # configured but off: vLLM ignores it
    mistral7b = shape_from_config({**LLAMA, "sliding_window": 4096})
    assert mistral7b["sliding_window"] == 4096
    gemma = shape_from_config(
        {**LLAMA, "sliding_window": 1024, "layer_types": ["sliding_attention", "full_attention"]}
    )
    assert gemma["hybrid"] == "layer_types mixes sliding-window and full attention"
    deepseek = shape_from_config({**LLAMA, "kv_lora_rank": 512, "model_type": "deepseek_v3"})
    assert deepseek["kv_lora_rank"] == 512
    jamba = shape_from_config({**LLAMA, "model_type": "jamba"})
    assert jamba["hybrid"] == "model_type jamba"
    qwen3next = shape_from_config({**LLAMA, "layer_types": ["linear_attention", "full_attention"]})
    assert qwen3next["hybrid"] == "layer_types has linear_attention"
    fp8 = shape_from_config({**LLAMA, "quantization_config": {"quant_method": "fp8"}})
    assert fp8["quantization"] == "fp8"


def test_multimodal_config_reads_its_language_part() -> None:
    mistral3 = {
        "architectures": ["Mistral3ForConditionalGeneration"],
        "model_type": "mistral3",
        "torch_dtype": "bfloat16",
        "text_config": {"model_type": "mistral", "hidden_size": 5120, "num_hidden_layers": 40,
                        "num_attention_heads": 32, "num_key_value_heads": 8, "head_dim": 128,
                        "sliding_window": None},
        "vision_config": {"hidden_size": 1024, "num_hidden_layers": 24},
    }  # fmt: skip
    f = ModelFacts(**shape_from_config(mistral3))
    assert (f.layers, f.kv_heads, f.head_dim, f.hidden_size, f.text_config) == (
        40,
        8,
        128,
        5120,
        True,
    )
    assert f.architecture == "Mistral3ForConditionalGeneration" and f.dtype == "bfloat16"


def test_params_json_with_mistral_config_format() -> None:
    params = {"dim": 5120, "n_layers": 40, "head_dim": 128, "hidden_dim": 32768, "n_heads": 32,
              "n_kv_heads": 8, "vocab_size": 131072, "vision_encoder": {"hidden_size": 1024}}  # fmt: skip
    f = ModelFacts(**shape_from_params(params))
    assert (f.layers, f.attention_heads, f.kv_heads, f.head_dim, f.hidden_size) == (
        40,
        32,
        8,
        128,
        5120,
    )
    files = {"params.json": json.dumps(params).encode(), "config.json": json.dumps(LLAMA).encode()}
    assert model_facts(files, manifest(config_format="mistral")).config == "params.json"
    assert model_facts(files, manifest()).config == "config.json"


def test_image_cuda_from_the_config_environment() -> None:
    env = [
        "PATH=/usr/bin",
        "CUDA_VERSION=12.8.1",
        "NVIDIA_REQUIRE_CUDA=cuda>=12.8 brand=tesla,driver>=535,driver<536",
    ]
    cuda = image_cuda(json.dumps({"config": {"Env": env}}).encode())
    assert cuda is not None and cuda.require == "cuda>=12.8 brand=tesla,driver>=535,driver<536"
    assert cuda.version == "12.8.1" and cuda.disable_require is None
    assert image_cuda(json.dumps({"config": {"Env": ["PATH=/bin"]}}).encode()) is None
    assert image_cuda(b"not json") is None


# -- in the signed index --------------------------------------------------------------------


def v2(**extra: Any) -> dict[str, Any]:
    doc = _index([_entry("models/m/config.json", 10)])
    return {**doc, "format": "airgap-bundle/2", "requires": "airgap>=0.2.0", **extra}


def test_index_with_model_facts_round_trips_byte_for_byte() -> None:
    facts = model_facts(
        {
            "config.json": json.dumps(TINY_CONFIG).encode(),
            "model.safetensors": safetensors({"w": ("F32", [4])}),
        },
        manifest(),
    )
    data = Index.model_validate(v2(model_facts=facts.model_dump(mode="json"))).to_bytes()
    parsed = parse_index(data)
    assert parsed.to_bytes() == data and parsed.model_facts == facts
    doc = json.loads(data)
    assert "head_dim" not in doc["model_facts"] and "notes" not in doc["model_facts"]  # omitted
    assert "sbom" not in doc and "base" not in doc


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda d: d.update(format="airgap-bundle/1"), "requires: not part of airgap-bundle/1"),
        (lambda d: d.pop("requires"), "names the release it needs"),
        (lambda d: d.update(requires="anything"), "requires"),
        (lambda d: d.update(model_facts={"layers": 2, "surprise": 1}), "surprise"),
        (lambda d: d.update(model_facts={"layers": 0}), "model_facts.layers"),
        (lambda d: d.update(sbom={"path": "models/x", "sha256": "0" * 64}), "under airgap/"),
    ],
)
def test_index_format_rules(change: Any, message: str) -> None:
    doc = v2()
    change(doc)
    with pytest.raises(BundleError, match=message):
        parse_index(canonical.dumps(doc))


def test_a_null_is_not_an_unset_key() -> None:
    """Only one text of an index is accepted: an explicit null would not re-serialise."""
    with pytest.raises(BundleError, match="round-trip"):
        parse_index(canonical.dumps(v2(model_facts={"layers": 2, "head_dim": None})))
    with pytest.raises(BundleError, match="round-trip"):
        parse_index(canonical.dumps(v2(sbom=None)))


def test_v1_index_still_parses_and_v2_schema_keys_validate() -> None:
    data = canonical.dumps(_index([_entry("models/m/a", 1)]))
    assert parse_index(data).format == "airgap-bundle/1"
    base = {"index_sha256": "a" * 64, "name": "m", "version": 1, "reused": ["models/m/config.json"]}
    sbom = {"path": "airgap/sbom.cdx.json", "sha256": "b" * 64}
    parsed = parse_index(canonical.dumps(v2(base=base, sbom=sbom)))
    assert parsed.base is not None and parsed.base.reused == ["models/m/config.json"]
    assert parsed.sbom is not None and parsed.sbom.path == "airgap/sbom.cdx.json"
