"""``gptmed-infer eval``: answer perplexity, exact match, token F1 and ROUGE-L on held-out pairs.

* perplexity: ``exp(mean NLL)`` of the reference answer tokens (and EOS) given the prompt, teacher
  forced through the same graph the runtime uses;
* exact match / token F1: SQuAD-style normalisation (lower case, no punctuation or articles);
* ROUGE-L: F-measure of the longest common subsequence of normalised tokens.
"""

from __future__ import annotations

import itertools
import math
import os
import re
import string
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
from gptmed.core import DataError, QAPair, read_qa_records

__all__ = ["EvalReport", "evaluate", "exact_match", "normalize_answer", "rouge_l", "token_f1"]

_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCT = str.maketrans("", "", string.punctuation)


def normalize_answer(text: str) -> list[str]:
    """Lower case, punctuation and English articles removed, split on whitespace."""
    text = _ARTICLES.sub(" ", text.lower().translate(_PUNCT))
    return text.split()


def exact_match(prediction: str, reference: str) -> float:
    return float(normalize_answer(prediction) == normalize_answer(reference))


def token_f1(prediction: str, reference: str) -> float:
    pred, ref = normalize_answer(prediction), normalize_answer(reference)
    if not pred or not ref:
        return float(pred == ref)
    common = sum((Counter(pred) & Counter(ref)).values())
    if common == 0:
        return 0.0
    p, r = common / len(pred), common / len(ref)
    return 2 * p * r / (p + r)


def _lcs(a: Sequence[str], b: Sequence[str]) -> int:
    prev = [0] * (len(b) + 1)
    for x in a:
        cur = [0]
        for j, y in enumerate(b):
            cur.append(prev[j] + 1 if x == y else max(prev[j + 1], cur[j]))
        prev = cur
    return prev[-1]


def rouge_l(prediction: str, reference: str) -> float:
    pred, ref = normalize_answer(prediction), normalize_answer(reference)
    if not pred or not ref:
        return float(pred == ref)
    lcs = _lcs(pred, ref)
    if lcs == 0:
        return 0.0
    p, r = lcs / len(pred), lcs / len(ref)
    return 2 * p * r / (p + r)


@dataclass(frozen=True)
class EvalReport:
    pairs: int
    answer_tokens: int
    perplexity: float
    exact_match: float
    token_f1: float
    rouge_l: float
    examples: list[dict[str, str]]  # the first few question / reference / prediction triples
    skipped: int = 0  # pairs whose prompt leaves no room in the context for an answer token
    truncated_answers: int = 0  # answers cut at the context for perplexity (scored on what fits)
    skipped_where: list[str] = field(default_factory=list)  # the first few skipped pairs (FILE:LINE)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _log_softmax(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.float64)
    x = x - x.max(axis=-1, keepdims=True)
    out: np.ndarray = x - np.log(np.exp(x).sum(axis=-1, keepdims=True))
    return out


def evaluate(
    generator: Any,
    pairs: Iterable[QAPair] | str | os.PathLike[str],
    *,
    max_length: int | None = None,
    batch_size: int = 8,
    limit: int | None = None,
    examples: int = 3,
) -> EvalReport:
    """Score ``generator`` (a :class:`~gptmed.inference.TextGenerator`) on Q&A ``pairs`` (or a Q&A file).

    Answers are generated greedily; ``max_length`` defaults to the longest reference + 8 tokens,
    capped per pair by the room its prompt leaves in the context (pairs are batched with pairs of
    the same budget, so the scores do not depend on the order of the pairs or on ``batch_size``).
    A pair whose prompt fills the model's context is skipped and counted (``skipped``, with the
    first few places in ``skipped_where``); an answer longer than the room left is scored for
    perplexity on the part that fits and counted in ``truncated_answers``.
    """
    if isinstance(pairs, (str, os.PathLike)):
        path = str(pairs)
        records = [(f"{path}:{line}", pair) for line, pair in read_qa_records(pairs)]
    else:
        records = [(f"pair {i + 1}", pair) for i, pair in enumerate(pairs)]
    records = records[:limit] if limit else records
    if not records:
        raise DataError("no Q&A pairs to evaluate")
    tok = generator.tokenizer
    eos = generator.special_ids.eos
    ctx = generator.config.max_seq_len
    items: list[QAPair] = []
    prompt_lens: list[int] = []
    skipped: list[str] = []
    truncated = 0
    nll = 0.0
    count = 0
    for where, pair in records:
        prompt = generator.encode_prompt(pair.question)
        if len(prompt) >= ctx:
            skipped.append(where)
            continue
        items.append(pair)
        prompt_lens.append(len(prompt))
        answer = [*tok.encode(generator.template.render_answer(pair.answer)), eos]
        ids = (prompt + answer)[:ctx]
        truncated += len(prompt) + len(answer) > ctx
        n_answer = len(ids) - len(prompt)
        arr = np.asarray([ids], dtype=np.int64)
        logits = generator.backend.forward(arr, np.ones_like(arr))[0]  # (T, V)
        logp = _log_softmax(logits[len(prompt) - 1 : len(ids) - 1])  # predicts ids[len(prompt):]
        targets = np.asarray(ids[len(prompt) :])
        nll -= float(logp[np.arange(n_answer), targets].sum())
        count += n_answer
    if not items:
        raise DataError(
            f"every question of the {len(records)} pairs fills the model's context of {ctx} tokens "
            f"(first: {skipped[0]})",
            hint="evaluate on pairs of the kind the model was trained on",
        )
    longest = max(len(tok.encode(p.answer)) for p in items) + 8
    # Each pair gets its own budget (capped by the room its prompt leaves), never its batch's: a
    # long question must not cut the answers batched with it. Batches hold pairs of one budget.
    budget = [min(max_length or longest, ctx - n) for n in prompt_lens]
    predictions = [""] * len(items)
    by_budget = sorted(range(len(items)), key=budget.__getitem__)
    for n, group in itertools.groupby(by_budget, key=budget.__getitem__):
        rows = list(group)
        for start in range(0, len(rows), batch_size):
            chunk = rows[start : start + batch_size]
            answers = generator.generate_batch(
                [items[i].question for i in chunk], temperature=0.0, max_length=n
            )
            for i, answer in zip(chunk, answers, strict=True):
                predictions[i] = answer
    refs = [p.answer for p in items]
    em = float(np.mean([exact_match(p, r) for p, r in zip(predictions, refs, strict=True)]))
    f1 = float(np.mean([token_f1(p, r) for p, r in zip(predictions, refs, strict=True)]))
    rl = float(np.mean([rouge_l(p, r) for p, r in zip(predictions, refs, strict=True)]))
    ppl = math.exp(nll / count) if count else float("nan")
    shown = [
        {"question": p.question, "reference": p.answer, "prediction": pred}
        for p, pred in list(zip(items, predictions, strict=True))[:examples]
    ]
    return EvalReport(len(items), count, ppl, em, f1, rl, shown, len(skipped), truncated, skipped[:5])
