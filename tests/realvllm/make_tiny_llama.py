"""Write a tiny random-weight Llama in Hugging Face format, made here and offline.

Run with ``.venv-vllm``'s interpreter (it has torch, transformers and tokenizers)::

    .venv-vllm/bin/python tests/realvllm/make_tiny_llama.py OUT_DIR

``OUT_DIR`` then holds what a Hugging Face model repo holds and what vLLM loads:
``config.json``, ``generation_config.json``, ``model.safetensors`` (float32, about
1.7 MB), ``tokenizer.json`` (a byte-level BPE trained here on a short built-in text)
and ``tokenizer_config.json`` carrying a Llama-3-style chat template.

The weights are random (seeded): the model answers with nonsense, which is all a
serving test needs. Two runs write byte-identical weights and tokenizer.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

SEED = 20261121
VOCAB_SIZE = 512
BOS, EOS, PAD = "<|begin_of_text|>", "<|eot_id|>", "<|pad|>"
HEADER_START, HEADER_END = "<|start_header_id|>", "<|end_header_id|>"
SPECIAL_TOKENS = [BOS, EOS, PAD, HEADER_START, HEADER_END]

# Llama 3's chat layout: a header per message, each message closed by <|eot_id|>.
CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{{ '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n' }}"
    "{{ message['content'] | trim }}{{ '<|eot_id|>' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}"
    "{{ '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}"
    "{% endif %}"
)

# What the BPE merges are learnt from: a few lines of ordinary English and JSON.
CORPUS = [
    "Hello! How can I help you today?",
    "Say hello. The quick brown fox jumps over the lazy dog.",
    "Kibana asks the assistant a question and the model answers it.",
    "Elasticsearch stores documents; the observability assistant reads logs and metrics.",
    '{"role": "user", "content": "What is the status of the cluster?"}',
    "system user assistant tool function arguments name content",
    "0 1 2 3 4 5 6 7 8 9 10 100 1000",
    "An air-gapped network has no route to the internet.",
] * 20


def build_tokenizer() -> PreTrainedTokenizerFast:
    """A byte-level BPE tokenizer (any text encodes) with Llama 3's special tokens."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(CORPUS, trainer=trainer)
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=BOS,
        eos_token=EOS,
        pad_token=PAD,
        model_max_length=512,
    )


def write_model(out: Path) -> None:
    """Tokenizer, config and seeded random weights into ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    tokenizer = build_tokenizer()
    tokenizer.save_pretrained(str(out))
    # The chat template goes into tokenizer_config.json, where every version of
    # transformers and vLLM looks for it (newer transformers would write a separate
    # chat_template.jinja instead), and the class is named as transformers 4 knows it
    # (transformers 5 writes its new name, TokenizersBackend, and reads both).
    cfg_path = out / "tokenizer_config.json"
    tok_cfg = json.loads(cfg_path.read_text())
    tok_cfg["chat_template"] = CHAT_TEMPLATE
    tok_cfg["tokenizer_class"] = "PreTrainedTokenizerFast"
    cfg_path.write_text(json.dumps(tok_cfg, indent=2, sort_keys=True) + "\n")
    (out / "chat_template.jinja").unlink(missing_ok=True)

    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=128,
        intermediate_size=256,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        rms_norm_eps=1e-5,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=False,
        torch_dtype="float32",
    )
    torch.manual_seed(SEED)
    model = LlamaForCausalLM(config).to(torch.float32).eval()
    model.generation_config.max_length = 64
    model.save_pretrained(str(out), safe_serialization=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path, help="directory to write the model into")
    write_model(parser.parse_args().out)


if __name__ == "__main__":
    main()
