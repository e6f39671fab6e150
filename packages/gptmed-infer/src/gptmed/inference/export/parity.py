"""The parity gate: the exported graph must reproduce the torch model before a bundle is written.

onnxruntime and torch see the same prompts; their logits may differ by at most ``PARITY_ATOL``
(1e-4) on a left-padded prefill and on cached decode steps, and greedy generation must give the
same tokens on every prompt. Both backends hand their logits to the one numpy sampler
(:class:`gptmed.inference.sampling.Sampler`), so any difference is the graph's.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from gptmed.core import BundleError, GenerationConfig
from gptmed.inference.sampling import Sampler

__all__ = [
    "PARITY_ATOL",
    "PARITY_DECODE_STEPS",
    "PARITY_GREEDY_TOKENS",
    "PARITY_PROMPTS",
    "ParityError",
    "check_parity",
    "generated_tokens",
    "greedy_tokens",
    "prompt_set",
]

PARITY_ATOL = 1e-4  # max |onnx - torch| logit difference in fp32 (prefill and cached decode)
PARITY_DECODE_STEPS = 8  # cached decode steps compared one by one
PARITY_GREEDY_TOKENS = 24  # greedy tokens compared per prompt
PARITY_PROMPTS = (
    "What is diabetes?",
    "How do I reset my password?",
    "What are the symptoms of the flu?",
    "How is high blood pressure treated?",
    "Can children take aspirin?",
    "What causes headaches?",
)
_HINT = "no bundle was written; report this with the checkpoint's model config"
# the model's own argmax: no frequency penalty (GenerationConfig's default 0.5), which would make
# "greedy" tokens that a teacher-forced argmax (the int8 gate's) does not pick
_GREEDY = GenerationConfig(temperature=0.0, frequency_penalty=0.0)


class ParityError(BundleError):
    """The exported graph does not reproduce the torch model; no bundle was written."""


def prompt_set(tokenizer: Any, config: Any, prompts: Sequence[str]) -> list[list[int]]:
    """``prompts`` as the ids generation feeds the model (``[bos] + template``), each cut short
    enough to leave room for ``PARITY_GREEDY_TOKENS`` new tokens in the context."""
    bos = tokenizer.special_ids.bos
    ids = [[bos, *tokenizer.encode(tokenizer.template.render_prompt(p))] for p in prompts]
    limit = max(4, config.max_seq_len - PARITY_GREEDY_TOKENS - 1)
    return [p[:limit] for p in ids]


def greedy_tokens(backend: Any, prompt: list[int], max_new: int) -> list[int]:
    """``max_new`` greedy tokens (each the argmax of the logits) after ``prompt`` on ``backend``
    (batch 1, KV cache)."""
    return generated_tokens(backend, prompt, max_new, _GREEDY)


def generated_tokens(backend: Any, prompt: list[int], max_new: int, config: GenerationConfig) -> list[int]:
    """``max_new`` tokens after ``prompt`` on ``backend``, chosen as ``config`` says (batch 1, KV
    cache; EOS does not stop it)."""
    ids = np.asarray([prompt], dtype=np.int64)  # (1, T)
    logits, state = backend.prefill(ids, np.ones_like(ids))  # (1, V)
    sampler = Sampler(config, 1, backend.config.vocab_size, [prompt])
    out: list[int] = []
    for step in range(max_new):
        tok = sampler.next_tokens(logits)  # (1,)
        out.append(int(tok[0]))
        if step < max_new - 1:
            logits = backend.decode(state, tok)
    return out


def _left_padded(prompt_ids: list[list[int]]) -> tuple[np.ndarray, np.ndarray]:
    """The prompts as one left-padded batch: ids and mask, both ``(B, T)`` int64."""
    batch, width = len(prompt_ids), max(len(p) for p in prompt_ids)
    ids = np.zeros((batch, width), dtype=np.int64)
    mask = np.zeros((batch, width), dtype=np.int64)
    for row, p in enumerate(prompt_ids):
        ids[row, width - len(p) :] = p
        mask[row, width - len(p) :] = 1
    return ids, mask


def check_parity(
    torch_backend: Any, onnx_backend: Any, prompt_ids: list[list[int]], atol: float = PARITY_ATOL
) -> dict[str, Any]:
    """Compare onnxruntime with torch; raise :class:`ParityError` on any difference past ``atol``.

    Prefill: the prompt set as one left-padded batch, every real position's logits. Decode:
    ``PARITY_DECODE_STEPS`` cached steps feeding torch's greedy tokens to both. Greedy: each
    prompt alone, ``PARITY_GREEDY_TOKENS`` tokens, must be identical.
    """
    cfg = torch_backend.config
    ids, mask = _left_padded(prompt_ids)
    real = mask.astype(bool)
    full_t = torch_backend.forward(ids, mask)  # (B, T, V)
    full_o = onnx_backend.forward(ids, mask)
    prefill_diff = float(np.abs(full_t - full_o)[real].max())
    lt, st = torch_backend.prefill(ids, mask)  # (B, V)
    lo, so = onnx_backend.prefill(ids, mask)
    decode_diff = float(np.abs(lt - lo).max())
    steps = min(PARITY_DECODE_STEPS, cfg.max_seq_len - ids.shape[1])
    for _ in range(steps):
        tokens = np.argmax(lt, axis=-1).astype(np.int64)  # (B,)
        lt = torch_backend.decode(st, tokens)
        lo = onnx_backend.decode(so, tokens)
        decode_diff = max(decode_diff, float(np.abs(lt - lo).max()))
    report: dict[str, Any] = {
        "atol": atol,
        "prefill_max_abs_diff": prefill_diff,
        "decode_max_abs_diff": decode_diff,
        "decode_steps": steps,
        "prompts": len(prompt_ids),
    }
    if not (prefill_diff <= atol and decode_diff <= atol):
        raise ParityError(
            f"parity gate failed: ONNX logits differ from torch by {max(prefill_diff, decode_diff):.3g} "
            f"(prefill {prefill_diff:.3g}, cached decode {decode_diff:.3g}; allowed {atol:g})",
            hint=_HINT,
        )
    mismatched = []
    for n, p in enumerate(prompt_ids):
        max_new = min(PARITY_GREEDY_TOKENS, cfg.max_seq_len - len(p))
        if greedy_tokens(torch_backend, p, max_new) != greedy_tokens(onnx_backend, p, max_new):
            mismatched.append(n)
    report["greedy_prompts_identical"] = len(prompt_ids) - len(mismatched)
    if mismatched:
        raise ParityError(
            f"parity gate failed: greedy tokens differ between ONNX and torch on prompts {mismatched}",
            hint=_HINT,
        )
    return report
