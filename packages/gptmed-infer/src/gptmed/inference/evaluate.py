"""``gptmed-infer eval``: how good a model's answers are, on held-out Q&A pairs.

Teacher forced, on the reference answers (:func:`score_answers`, through the same graph the runtime
uses, tokenized exactly as gptmed-tokenizer tokenizes training pairs):

* **answer bits per byte** (BPB): the summed negative log-likelihood, in bits, of each reference
  answer's tokens plus its EOS given ``<bos>`` + the rendered prompt (``Q: {question}\\nA:``),
  divided by the answers' UTF-8 bytes plus one per pair (the EOS). Lower is better; unlike
  perplexity it compares models with different tokenizers;
* **perplexity**: ``exp(mean NLL)`` per answer token (+ EOS).

On the model's own answers (greedy unless told otherwise), each given up to ``max_length`` new
tokens (448 by default, capped per pair by the room its question leaves in the context):

* **EOS share**: answers that end with EOS within that cap (:func:`ends_with_eos`);
* **loop rate**: answers that loop (:func:`is_looping`: over 30 % of their token 4-grams repeat);
* exact match / token F1 (SQuAD-style normalisation: lower case, no punctuation or articles) and
  ROUGE-L (F-measure of the longest common subsequence of normalised tokens).
"""

from __future__ import annotations

import itertools
import math
import os
import re
import string
import sys
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol

import numpy as np
from gptmed.core import (
    DEFAULT_TEMPLATE,
    SPECIAL_IDS,
    ConfigError,
    DataError,
    GenerationConfig,
    PromptTemplate,
    QAPair,
    SpecialIds,
    read_qa_records,
)
from gptmed.inference.generator import TextGenerator, load_tokenizer

__all__ = [
    "DEFAULT_MAX_LENGTH",
    "LOOP_NGRAM",
    "LOOP_SHARE",
    "AnswerScores",
    "EvalReport",
    "answer_bpb",
    "ends_with_eos",
    "eos_share",
    "evaluate",
    "exact_match",
    "is_looping",
    "loop_rate",
    "normalize_answer",
    "repeated_ngram_share",
    "rouge_l",
    "score_answers",
    "token_f1",
]

DEFAULT_MAX_LENGTH = 448  # new tokens an answer may take in eval: the length cap of the EOS share
LOOP_NGRAM = 4  # an answer loops when more than LOOP_SHARE of its LOOP_NGRAM-grams of tokens ...
LOOP_SHARE = 0.30  # ... repeat an earlier one of the same answer

_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCT = str.maketrans("", "", string.punctuation)


# ------------------------------------------------------------------------------------ text metrics
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


# ------------------------------------------------------------------------------------ token metrics
def repeated_ngram_share(ids: Sequence[int], n: int = LOOP_NGRAM) -> float:
    """Share of the ``n``-grams of ``ids`` that repeat an ``n``-gram seen earlier in ``ids``.

    The ``k = len(ids) - n + 1`` n-grams are ``ids[i : i + n]``; ``k - (distinct n-grams)`` of them
    repeat an earlier one, and the share is that count over ``k`` (0 when ``ids`` is shorter than
    ``n``). ``1 2 3 4 1 2 3 4`` has five 4-grams of which ``1 2 3 4`` repeats once: 0.2.
    """
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    grams = [tuple(ids[i : i + n]) for i in range(len(ids) - n + 1)]
    return (len(grams) - len(set(grams))) / len(grams) if grams else 0.0


def is_looping(ids: Sequence[int], n: int = LOOP_NGRAM, threshold: float = LOOP_SHARE) -> bool:
    """Whether an answer loops: more than ``threshold`` (30 %) of its token ``n``-grams (4-grams)
    repeat an ``n``-gram seen earlier in the same answer (:func:`repeated_ngram_share`).

    ``ids`` are the generated answer's token ids, EOS excluded; an answer shorter than ``n`` tokens
    has no n-grams and does not loop. A sentence said twice in a row repeats about half of the
    4-grams of the pair, so such an answer loops; an answer that reuses a phrase here and there
    (``the risk of``) does not.
    """
    return repeated_ngram_share(ids, n) > threshold


def loop_rate(answers: Sequence[Sequence[int]], n: int = LOOP_NGRAM, threshold: float = LOOP_SHARE) -> float:
    """Share of ``answers`` (token ids each, EOS excluded) that loop (:func:`is_looping`); 0 for none."""
    return sum(is_looping(a, n, threshold) for a in answers) / len(answers) if answers else 0.0


def ends_with_eos(output: Sequence[int], eos: int, max_length: int) -> bool:
    """Whether a generated ``output`` (token ids as produced, EOS included when it came) holds EOS
    among its first ``max_length`` tokens: the answer ended by itself within that cap."""
    return eos in output[:max_length]


def eos_share(outputs: Sequence[Sequence[int]], eos: int, max_length: int | Sequence[int]) -> float:
    """Share of ``outputs`` that end with EOS within ``max_length`` (one cap, or one per output)."""
    caps = [max_length] * len(outputs) if isinstance(max_length, int) else list(max_length)
    if len(caps) != len(outputs):
        raise ValueError(f"{len(caps)} caps for {len(outputs)} outputs")
    if not outputs:
        return 0.0
    return sum(ends_with_eos(o, eos, c) for o, c in zip(outputs, caps, strict=True)) / len(outputs)


# ------------------------------------------------------------------------------------ answer BPB
class LogitsModel(Protocol):
    """What :func:`score_answers` runs: gptmed's backends (onnxruntime, torch) have this shape.

    ``forward(input_ids (B, T) int64, attention_mask (B, T) int64) -> logits (B, T, V)`` (numpy),
    and ``config.max_seq_len``, the longest window it takes. Wrap another model (a Hugging Face
    GPT-2) in an object of this shape to score it the same way.
    """

    config: Any

    def forward(self, input_ids: np.ndarray, attention_mask: np.ndarray) -> np.ndarray: ...


@dataclass(frozen=True)
class AnswerScores:
    """Teacher-forced scores of reference answers (:func:`score_answers`); per-pair tuples in order."""

    nll: tuple[float, ...]  # per pair: summed NLL in nats of its answer tokens + EOS
    tokens: tuple[int, ...]  # per pair: answer tokens + 1 (the EOS)
    bytes: tuple[int, ...]  # per pair: UTF-8 bytes of the answer + 1 (the EOS)
    eos_logprob: tuple[float, ...]  # per pair: log P(EOS) where the reference answer ends
    windowed: int = 0  # pairs longer than the context, scored in windows

    @property
    def pairs(self) -> int:
        return len(self.nll)

    @property
    def answer_tokens(self) -> int:
        return sum(self.tokens)

    @property
    def answer_bytes(self) -> int:
        return sum(self.bytes)

    @property
    def bits_per_byte(self) -> float:
        """Answer BPB: all pairs' NLL in bits over all pairs' bytes (+1 each)."""
        return math.fsum(self.nll) / math.log(2) / self.answer_bytes if self.nll else math.nan

    @property
    def perplexity(self) -> float:
        """``exp`` of the mean NLL per answer token (+ EOS)."""
        return math.exp(math.fsum(self.nll) / self.answer_tokens) if self.nll else math.nan


def _log_softmax(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.float64)
    x = x - x.max(axis=-1, keepdims=True)
    out: np.ndarray = x - np.log(np.exp(x).sum(axis=-1, keepdims=True))
    return out


def _logits_model(model: Any) -> LogitsModel:
    """A :class:`TextGenerator`'s backend, a torch ``GPTTransformer`` in the torch backend, or ``model``."""
    if isinstance(model, TextGenerator):
        return model.backend
    torch = sys.modules.get("torch")  # a torch module implies torch is imported: no import here
    if torch is not None and isinstance(model, torch.nn.Module):
        from gptmed.inference.export.torch_backend import TorchBackend

        return TorchBackend(model)
    return model  # type: ignore[no-any-return]


def _sequence_nll(
    model: LogitsModel, ids: np.ndarray, first: int, context: int, stride: int
) -> tuple[float, float]:
    """(summed NLL in nats of ``ids[first:]``, log-prob of the last id), each id predicted from what
    precedes it in a window of at most ``context`` ids.

    Windows start at 0, ``stride``, ``2 * stride``, ... and each scores the ids that no earlier
    window scored, so id ``j`` is predicted from ``ids[s : j]`` with ``s = 0`` for ``j < context``
    and otherwise the least multiple of ``stride`` with ``j < s + context``: every scored id has at
    least ``context - stride`` ids of context (or all before it), and is scored exactly once.
    """
    n = len(ids)
    total, last = 0.0, math.nan
    start, done = 0, first  # ids before ``done`` are scored already, or not targets
    while done < n:
        end = min(start + context, n)
        if end > done:
            window = ids[None, start:end]  # (1, T)
            logits = model.forward(window, np.ones_like(window))[0]  # (T, V)
            offset = done - start  # the first target's place in the window (>= 1)
            logp = _log_softmax(logits[offset - 1 : end - start - 1])  # predicts ids[done:end]
            picked = logp[np.arange(end - done), ids[done:end]]
            total -= float(picked.sum())
            last, done = float(picked[-1]), end
        start += stride
    return total, last


def _as_pair(item: QAPair | tuple[str, str]) -> QAPair:
    return item if isinstance(item, QAPair) else QAPair(*item)


def score_answers(
    model: Any,
    tokenizer: Any,
    pairs: Iterable[QAPair | tuple[str, str]],
    *,
    template: PromptTemplate | None = None,
    special_ids: SpecialIds | None = None,
    context: int | None = None,
    stride: int | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> AnswerScores:
    """Teacher-forced NLL of each pair's reference answer tokens + EOS (see :class:`AnswerScores`).

    ``model``: a :class:`TextGenerator` (its backend, template and special ids), a torch
    ``GPTTransformer``, or any :class:`LogitsModel`. ``tokenizer``: a gptmed ``Tokenizer`` (or the
    path of its ``.model``; anything with ``encode(text) -> ids``). Each pair is laid out as
    gptmed-tokenizer lays out training pairs: ``[bos] + encode(template.render_prompt(q))`` then
    ``encode(template.render_answer(a)) + [eos]``. A pair longer than ``context`` (default: the
    model's ``max_seq_len``) is scored in windows starting every ``stride`` tokens (default
    ``context // 2``; see :func:`_sequence_nll`), so every answer token is scored exactly once.
    ``progress(done, total)`` is called after each pair.
    """
    if isinstance(tokenizer, (str, os.PathLike)):
        tokenizer = load_tokenizer(tokenizer)
    if isinstance(model, TextGenerator):
        template = template or model.template
        special_ids = special_ids or model.special_ids
    template, special_ids = template or DEFAULT_TEMPLATE, special_ids or SPECIAL_IDS
    scorer = _logits_model(model)
    context = context or int(scorer.config.max_seq_len)
    stride = stride or max(context // 2, 1)
    if not 1 <= stride < context:
        raise ConfigError(f"stride must be in [1, {context - 1}] (below the context), got {stride}")
    items = [_as_pair(p) for p in pairs]
    nll, tokens, sizes, eos_lp = [], [], [], []
    windowed = 0
    for done, pair in enumerate(items, 1):
        prompt = [special_ids.bos, *tokenizer.encode(template.render_prompt(pair.question))]
        answer = [*tokenizer.encode(template.render_answer(pair.answer)), special_ids.eos]
        ids = np.asarray(prompt + answer, dtype=np.int64)
        windowed += len(ids) > context
        total, last = _sequence_nll(scorer, ids, len(prompt), context, stride)
        nll.append(total)
        tokens.append(len(answer))
        sizes.append(len(pair.answer.encode("utf-8")) + 1)
        eos_lp.append(last)
        if progress is not None:
            progress(done, len(items))
    return AnswerScores(tuple(nll), tuple(tokens), tuple(sizes), tuple(eos_lp), windowed)


def answer_bpb(
    model: Any, tokenizer: Any, pairs: Iterable[QAPair | tuple[str, str]], **options: Any
) -> float:
    """Answer bits per byte of ``model`` on ``pairs``: :func:`score_answers` (same arguments)
    ``.bits_per_byte``."""
    return score_answers(model, tokenizer, pairs, **options).bits_per_byte


# ------------------------------------------------------------------------------------ eval
@dataclass(frozen=True)
class EvalReport:
    pairs: int
    answer_tokens: int  # reference answer tokens + one EOS per pair, scored teacher forced
    answer_bytes: int  # UTF-8 bytes of the reference answers + one per pair (the EOS)
    answer_bpb: float  # bits per byte of the reference answers (+ EOS); lower is better
    perplexity: float  # exp(mean NLL) per reference answer token (+ EOS)
    eos_share: float  # generated answers that ended with EOS within their max_length
    loop_rate: float  # generated answers that loop (over 30 % of their token 4-grams repeat)
    exact_match: float
    token_f1: float
    rouge_l: float
    max_length: int  # new tokens an answer could take (capped per pair by the room its question leaves)
    decoding: dict[str, Any]  # the generation settings of the answers (GenerationConfig.to_dict())
    finish_reasons: dict[str, int]  # how the answers ended: eos, stop (a stop string), length
    examples: list[dict[str, str]]  # the first few question / reference / prediction triples
    skipped: int = 0  # pairs whose prompt leaves no room in the context for an answer token
    windowed_answers: int = 0  # pairs longer than the context, scored in windows
    skipped_where: list[str] = field(default_factory=list)  # the first few skipped pairs (FILE:LINE)
    answered: int = 0  # pairs whose answers were generated (EOS share, loops, EM, F1, ROUGE-L)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _records(pairs: Iterable[QAPair] | str | os.PathLike[str], limit: int | None) -> list[tuple[str, QAPair]]:
    if isinstance(pairs, (str, os.PathLike)):
        path = str(pairs)
        records = [(f"{path}:{line}", pair) for line, pair in read_qa_records(pairs)]
    else:
        records = [(f"pair {i + 1}", pair) for i, pair in enumerate(pairs)]
    records = records[:limit] if limit else records
    if not records:
        raise DataError("no Q&A pairs to evaluate")
    return records


def _generate(
    generator: Any, questions: list[str], budgets: list[int], config: GenerationConfig, batch_size: int
) -> list[Any]:
    """A :class:`GenerationResult` per question, each with its own ``max_length`` budget.

    Questions are batched with questions of the same budget, so the answers do not depend on the
    order of the questions or on ``batch_size`` (a long question must not cut the others)."""
    results: list[Any] = [None] * len(questions)
    by_budget = sorted(range(len(questions)), key=budgets.__getitem__)
    for n, group in itertools.groupby(by_budget, key=budgets.__getitem__):
        rows = list(group)
        for start in range(0, len(rows), batch_size):
            chunk = rows[start : start + batch_size]
            batch = generator.generate_results(
                [questions[i] for i in chunk], config=config.replace(max_length=n)
            )
            for i, result in zip(chunk, batch, strict=True):
                results[i] = result
    return results


def evaluate(
    generator: Any,
    pairs: Iterable[QAPair] | str | os.PathLike[str],
    *,
    max_length: int | None = None,
    batch_size: int = 8,
    limit: int | None = None,
    examples: int = 3,
    decoding: GenerationConfig | None = None,
    answers: int | None = None,
) -> EvalReport:
    """Score ``generator`` (a :class:`~gptmed.inference.TextGenerator`) on Q&A ``pairs`` (or a Q&A file).

    Answers are generated with ``decoding`` (default: the generator's defaults at temperature 0,
    i.e. greedy with the bundle's penalties), each with up to ``max_length`` new tokens (default
    :data:`DEFAULT_MAX_LENGTH`, 448) capped per pair by the room its prompt leaves in the context.
    A pair whose prompt fills the model's context is skipped and counted (``skipped``, with the
    first few places in ``skipped_where``); reference answers longer than the context are scored
    in windows (``windowed_answers``). Answer BPB and perplexity cover every pair; the answers are
    generated for the first ``answers`` of them (default: all), which the generated-answer metrics
    (EOS share, loop rate, EM, F1, ROUGE-L) cover (``answered``).
    """
    records = _records(pairs, limit)
    eos = generator.special_ids.eos
    ctx = generator.config.max_seq_len
    items: list[QAPair] = []
    prompt_lens: list[int] = []
    skipped: list[str] = []
    for where, pair in records:
        n_prompt = len(generator.encode_prompt(pair.question))
        if n_prompt >= ctx:
            skipped.append(where)
            continue
        items.append(pair)
        prompt_lens.append(n_prompt)
    if not items:
        raise DataError(
            f"every question of the {len(records)} pairs fills the model's context of {ctx} tokens "
            f"(first: {skipped[0]})",
            hint="evaluate on pairs of the kind the model was trained on",
        )
    scores = score_answers(generator, generator.tokenizer, items)
    cap = max_length or DEFAULT_MAX_LENGTH
    config = decoding or generator.defaults.replace(temperature=0.0)
    asked = items[:answers] if answers else items
    budgets = [min(cap, ctx - n) for n in prompt_lens[: len(asked)]]
    results = _generate(generator, [p.question for p in asked], budgets, config, batch_size)
    outputs = [r.token_ids + ([eos] if r.finish_reason == "eos" else []) for r in results]
    predictions = [r.text for r in results]
    refs = [p.answer for p in asked]
    shown = [
        {"question": p.question, "reference": p.answer, "prediction": pred}
        for p, pred in list(zip(asked, predictions, strict=True))[:examples]
    ]
    return EvalReport(
        pairs=len(items),
        answer_tokens=scores.answer_tokens,
        answer_bytes=scores.answer_bytes,
        answer_bpb=scores.bits_per_byte,
        perplexity=scores.perplexity,
        eos_share=eos_share(outputs, eos, budgets),
        loop_rate=loop_rate([r.token_ids for r in results]),
        exact_match=float(np.mean([exact_match(p, r) for p, r in zip(predictions, refs, strict=True)])),
        token_f1=float(np.mean([token_f1(p, r) for p, r in zip(predictions, refs, strict=True)])),
        rouge_l=float(np.mean([rouge_l(p, r) for p, r in zip(predictions, refs, strict=True)])),
        max_length=cap,
        decoding={k: v for k, v in config.to_dict().items() if k != "max_length"},
        finish_reasons=dict(Counter(r.finish_reason for r in results)),
        examples=shown,
        skipped=len(skipped),
        windowed_answers=scores.windowed,
        skipped_where=skipped[:5],
        answered=len(asked),
    )
