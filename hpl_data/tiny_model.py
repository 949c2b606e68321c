"""A tiny, randomly initialised Qwen2 chat model built locally, for tests and smoke runs.

No hub download: the tokenizer is a byte-level BPE trained with ``tokenizers`` on local text
(hpl's own prompts by default), wrapped with a ChatML chat template; the model is a Qwen2 from
config. Head size is 32, the smallest vLLM's CPU backend accepts. Its output is noise, which is
what engine and fault tests need: episodes must still complete and be recorded.
"""

from __future__ import annotations

import json
from pathlib import Path

CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]


def default_corpus() -> list[str]:
    """Local text: hpl's instructions and worked examples for every env."""
    from hpl_envs.prompts import DEFAULT_ICL, DEFAULT_INSTRUCTIONS

    texts = list(DEFAULT_INSTRUCTIONS.values())
    for convs in DEFAULT_ICL.values():
        texts += [m["content"] for conv in convs for m in conv]
    return texts


LLAMA3_TEMPLATE = (  # Llama-3's chat layout, for tests with a second template family
    "{{ '<|begin_of_text|>' }}{% for message in messages %}"
    "{{ '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n' + message['content'] + '<|eot_id|>' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}"
)
LLAMA3_SPECIAL_TOKENS = ["<|end_of_text|>", "<|begin_of_text|>", "<|start_header_id|>", "<|end_header_id|>",
                         "<|eot_id|>"]


def build_tokenizer(out_dir: str | Path, *, vocab_size: int = 1024, corpus: list[str] | None = None,
                    chat_template: str = CHATML_TEMPLATE, special_tokens: list[str] | None = None,
                    eos_token: str = "<|im_end|>", pad_token: str = "<|endoftext|>", max_positions: int = 8192):
    """A byte-level BPE trained on local text, with a chat template, saved to ``out_dir``."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=special_tokens or SPECIAL_TOKENS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(corpus or default_corpus(), trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=eos_token, pad_token=pad_token,
                                   bos_token=None, padding_side="left", chat_template=chat_template,
                                   model_max_length=max_positions)
    fast.save_pretrained(out)
    return fast


def build_tiny_model(out_dir: str | Path, *, vocab_size: int = 1024, hidden_size: int = 64, layers: int = 2,
                     heads: int = 2, max_positions: int = 8192, seed: int = 0,
                     corpus: list[str] | None = None, chat_template: str = CHATML_TEMPLATE) -> Path:
    """Write a tokenizer + Qwen2 model to ``out_dir`` (safetensors, float32) and return it."""
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    out = Path(out_dir)
    fast = build_tokenizer(out, vocab_size=vocab_size, corpus=corpus, chat_template=chat_template,
                           max_positions=max_positions)
    torch.manual_seed(seed)
    config = Qwen2Config(
        vocab_size=len(fast), hidden_size=hidden_size, intermediate_size=hidden_size * 2,
        num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=heads,
        max_position_embeddings=max_positions, tie_word_embeddings=True,
        eos_token_id=fast.convert_tokens_to_ids("<|im_end|>"),
        pad_token_id=fast.convert_tokens_to_ids("<|endoftext|>"), bos_token_id=None,
    )
    config.dtype = "float32"
    model = Qwen2ForCausalLM(config)
    model.save_pretrained(out, safe_serialization=True)
    gen = {"eos_token_id": config.eos_token_id, "pad_token_id": config.pad_token_id, "do_sample": True}
    (out / "generation_config.json").write_text(json.dumps(gen))
    return out


TINY_STAMP = {"model": "tiny", "builder": "hpl_data.tiny_model.build_tiny_model", "seed": 0}


def write_tiny_model(out: str | Path) -> Path:
    """``hpl-data model tiny``: the tests' tiny random Qwen2 (~0.14 M parameters, ChatML template) as a
    public HF folder, for smoke runs of hpl-train and the engine (``hf:``/``vllm:``) without any
    download. Written atomically with the same marker as :func:`hpl_data.models.convert`, so a
    finished folder is reused and a folder holding something else is refused."""
    from hpl_data.models import already_written, one_writer, written_atomically

    out = Path(out)
    with one_writer(out):
        if not already_written(out, TINY_STAMP):
            with written_atomically(out, TINY_STAMP) as tmp:
                build_tiny_model(tmp, seed=TINY_STAMP["seed"])
    return out
