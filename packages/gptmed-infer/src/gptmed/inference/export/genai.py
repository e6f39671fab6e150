"""``genai_config.json``: what onnxruntime-genai needs to load a bundle's graph.

The graph uses the optimum / onnxruntime-genai I/O names
(:func:`gptmed.inference.bundle.expected_io_names`) and one KV buffer shared by past and present
(``past_present_share_buffer``), so onnxruntime-genai runs it as a plain decoder.
"""

from __future__ import annotations

from typing import Any

from gptmed.core import GenerationConfig, ModelConfig, SpecialIds
from gptmed.inference.bundle import MODEL_FILE, kv_head_dim

__all__ = ["genai_config"]


def _decoder(config: ModelConfig, model_file: str) -> dict[str, Any]:
    return {
        "session_options": {"log_id": "gptmed", "provider_options": []},
        "filename": model_file,
        "head_size": kv_head_dim(config),  # the cache's (padded) head size
        "hidden_size": config.d_model,
        "num_attention_heads": config.n_heads,
        "num_key_value_heads": config.n_heads,
        "num_hidden_layers": config.n_layers,
        "inputs": {
            "input_ids": "input_ids",
            "attention_mask": "attention_mask",
            "position_ids": "position_ids",
            "past_key_names": "past_key_values.%d.key",
            "past_value_names": "past_key_values.%d.value",
        },
        "outputs": {
            "logits": "logits",
            "present_key_names": "present.%d.key",
            "present_value_names": "present.%d.value",
        },
    }


def genai_config(
    config: ModelConfig,
    special_ids: SpecialIds,
    generation: GenerationConfig,
    model_file: str = MODEL_FILE,
) -> dict[str, Any]:
    """``genai_config.json`` so that onnxruntime-genai loads the bundle's graph (decoder type llama)."""
    return {
        "model": {
            "bos_token_id": special_ids.bos,
            "eos_token_id": special_ids.eos,
            "pad_token_id": special_ids.pad,
            "context_length": config.max_seq_len,
            "vocab_size": config.vocab_size,
            "type": "llama",  # a plain decoder with position_ids; "gpt2" ignores position_ids
            "decoder": _decoder(config, model_file),
        },
        "search": {
            "do_sample": generation.temperature > 0,
            "early_stopping": True,
            "length_penalty": 1.0,
            "max_length": config.max_seq_len,
            "min_length": 0,
            "no_repeat_ngram_size": generation.no_repeat_ngram_size,  # (frequency / presence: no such key)
            "num_beams": 1,
            "num_return_sequences": 1,
            "past_present_share_buffer": True,  # GroupQueryAttention appends in place
            "repetition_penalty": generation.repetition_penalty,
            "temperature": generation.temperature if generation.temperature > 0 else 1.0,
            "top_k": generation.top_k,
            "top_p": generation.top_p,
        },
    }
