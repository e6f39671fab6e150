"""The settings a run chooses itself when the user leaves them out, each with its reason.

``TrainingConfig`` leaves ``dropout``, ``learning_rate`` and ``warmup_steps`` at ``None`` unless
the user sets them; :func:`choose` fills them in before the first step (and the run prints each
choice with its reason). Every flag still overrides. The rules come from held-out measurements
(answer bits per byte on a MedQuAD split, ``bench/quality.py``; figures in docs/training.md):

* dropout 0: a run of a few epochs never sees an example often enough to overfit it, and
  dropout only slowed learning (MedQuAD, 60 s on a GPU, medium: 0.791 -> 0.675 BPB without it;
  10 min on 2 CPU cores, tiny: 1.08 -> 0.955). Long many-epoch runs on small data keep the best
  checkpoint by validation loss, which is what guards them against overfitting.
* peak learning rate ``LR_AT_128 * 128 / d_model * sqrt(batch / 8)``: Adam's good learning rate
  falls with the model width and rises with the square root of the batch.
* warmup: 3% of the planned steps, at least 1 and at most 100.
"""

from __future__ import annotations

import math

from gptmed.core import Choice, ModelConfig
from gptmed.training.config import TrainingConfig

__all__ = [
    "LR_AT_128",
    "choose_dropout",
    "choose_learning_rate",
    "choose_model_size",
    "choose_warmup",
    "fill_in",
    "measure_tokens_per_s",
    "non_embedding_parameters",
    "preset_speeds",
]

LR_AT_128 = 2e-3  # peak LR of a width-128 model at 8 sequences per step
WARMUP_FRACTION = 0.03
MAX_WARMUP = 100


def choose_dropout() -> Choice:
    return Choice(
        "--dropout", 0.0, "no dropout: a run of a few epochs does not overfit (best checkpoint by val loss)"
    )


def choose_learning_rate(model: ModelConfig, rows_per_step: int) -> Choice:
    lr = LR_AT_128 * 128 / model.d_model * math.sqrt(rows_per_step / 8)
    lr = float(f"{lr:.2g}")
    return Choice(
        "--learning-rate",
        lr,
        f"for width {model.d_model} and {rows_per_step} sequences per step "
        f"({LR_AT_128:g} x 128/{model.d_model} x sqrt({rows_per_step}/8))",
    )


def choose_warmup(total_steps: int) -> Choice:
    steps = max(1, min(MAX_WARMUP, round(WARMUP_FRACTION * total_steps)))
    return Choice("--warmup-steps", steps, f"3% of the {total_steps:,} planned steps (at most {MAX_WARMUP})")


def fill_in(
    config: TrainingConfig, model: ModelConfig, rows_per_step: int, steps_per_epoch: int
) -> tuple[TrainingConfig, list[Choice], bool]:
    """``config`` with the settings the user left out chosen, the choices, and whether the warmup
    waits for a time budget's plan (until then it is :data:`MAX_WARMUP`)."""
    choices = []
    if config.dropout is None:
        choices.append(choose_dropout())
    if config.learning_rate is None:
        choices.append(choose_learning_rate(model, rows_per_step))
    if config.warmup_steps is None and config.time_budget is None:
        choices.append(choose_warmup(steps_per_epoch * (config.epoch_limit or 1)))
    fields = {"--dropout": "dropout", "--learning-rate": "learning_rate", "--warmup-steps": "warmup_steps"}
    chosen = {fields[c.flag]: c.value for c in choices}
    warmup_waits = config.warmup_steps is None and config.time_budget is not None
    if warmup_waits:
        chosen["warmup_steps"] = MAX_WARMUP
    return (config.replace(**chosen) if chosen else config), choices, warmup_waits


# -- the model size (gptmed pipeline, and gptmed-train with --time-budget and no --model-size) ----
TOKENS_PER_PARAMETER = 1.0  # a preset is worth its size once a run shows it >= 1 token per weight
EFFECTIVE_EPOCHS = 4  # repeating data beyond ~4 epochs teaches little new (data-constrained scaling)


def non_embedding_parameters(model: ModelConfig) -> int:
    """The weights that grow with width and depth (the embedding is a table lookup)."""
    return model.num_parameters() - model.vocab_size * model.d_model


def choose_model_size(
    candidates: dict[str, ModelConfig],
    *,
    corpus_tokens: int,
    tokens_per_s: dict[str, float] | None,
    budget_s: float | None,
    num_epochs: int,
) -> Choice:
    """The largest preset that the run can feed: tokens it will see (``tokens_per_s`` x budget, or
    ``num_epochs`` passes without a budget; repeats beyond :data:`EFFECTIVE_EPOCHS` passes do not
    count) at least :data:`TOKENS_PER_PARAMETER` per non-embedding weight; else the smallest.
    ``candidates`` in increasing size; ``tokens_per_s`` measured on this machine (budget runs)."""
    names = list(candidates)
    best = names[0]
    facts = []
    for name in names:
        limit = corpus_tokens * EFFECTIVE_EPOCHS
        if budget_s is not None and tokens_per_s is not None:
            seen = min(tokens_per_s[name] * budget_s, limit)
        else:
            seen = min(corpus_tokens * num_epochs, limit)
        need = TOKENS_PER_PARAMETER * non_embedding_parameters(candidates[name])
        facts.append(f"{name} {seen / 1e6:.1f}M of {need / 1e6:.1f}M")
        if seen >= need:
            best = name
    how = "in the time budget at the measured speed" if budget_s is not None else f"in {num_epochs} epochs"
    return Choice(
        "--model-size",
        best,
        f"the largest preset that sees >= {TOKENS_PER_PARAMETER:g} token per weight {how} "
        f"(tokens seen of needed: {', '.join(facts)})",
    )


def preset_speeds(presets: dict[str, ModelConfig], device: str, *, batch_size: int) -> dict[str, float]:
    """Training tokens per second of each preset on ``device`` (``auto``: CUDA when present),
    measured with :func:`measure_tokens_per_s` at the presets' context (a CPU measures 4 rows)."""
    import torch

    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    batch = min(batch_size, 4) if device == "cpu" else batch_size
    return {
        name: measure_tokens_per_s(model, device, batch_size=batch, seq_len=model.max_seq_len)
        for name, model in presets.items()
    }


def measure_tokens_per_s(model: ModelConfig, device: str, *, batch_size: int, seq_len: int) -> float:
    """Training tokens per second of ``model`` here: the second of two forward + backward passes
    of ``batch_size`` x ``seq_len`` random tokens (the first one warms up)."""
    import time

    import torch
    from gptmed.model import GPTTransformer

    dev = torch.device(device)
    net = GPTTransformer(model.replace(max_seq_len=max(model.max_seq_len, seq_len))).to(dev)
    x = torch.randint(4, model.vocab_size, (batch_size, seq_len), device=dev)
    seconds = 0.0
    for _ in range(2):
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)
        t0 = time.perf_counter()
        with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=dev.type == "cuda"):
            loss = net(x[:, :-1], targets=x[:, 1:])
        loss.backward()
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)
        seconds = time.perf_counter() - t0
        net.zero_grad(set_to_none=True)
    return batch_size * (seq_len - 1) / seconds
