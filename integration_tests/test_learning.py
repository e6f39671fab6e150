"""Learning is proven, not assumed: gptmed-data synth -> gptmed-tokenizer -> gptmed-train -> greedy answers.

A small model trained with the real trainer on the synthetic fact set must answer its training
questions exactly (greedy decoding with the model's KV cache, token-for-token equal to the answer
+ EOS): >= 90% exact match. And it must generalise, not only memorise: `synth` holds one phrasing
of every fact out of the training set ("Which river is the longest in Zorvia?" where training
asked "What is the longest river in Zorvia?"); the model must answer >= 80% of those unseen
phrasings exactly. Observed (seed 0, 240 steps = 60 epochs): 81/81 training questions, 30/30
held-out phrasings; 100-150 s on an idle 2-core CPU, up to 13 minutes with six other jobs on it.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("gptmed.training", reason="gptmed-train is not installed")
pytest.importorskip("gptmed.tokenizer", reason="gptmed-tokenizer is not installed")
data_mod = pytest.importorskip("gptmed.data", reason="gptmed-data is not installed")
if not hasattr(data_mod, "synth"):
    pytest.skip("gptmed.data.synth is not available yet", allow_module_level=True)

from gptmed.configs.train_config import TrainingConfig  # noqa: E402
from gptmed.core import SPECIAL_IDS, ModelConfig  # noqa: E402
from gptmed.model import GPTTransformer  # noqa: E402
from gptmed.tokenizer import Tokenizer, tokenize_dataset, train_tokenizer  # noqa: E402
from gptmed.training import load_checkpoint, train_model  # noqa: E402

EXACT_MATCH_THRESHOLD = 0.90
HELDOUT_EXACT_MATCH_THRESHOLD = 0.80  # measured 30/30 (seed 0); margin for other CPUs


def _pairs_in_rows(tokens: np.ndarray, mask: np.ndarray) -> list[tuple[list[int], list[int]]]:
    """(prompt ids incl. bos, answer ids incl. eos) of every complete pair packed in the rows."""
    out = []
    for row, m in zip(tokens.tolist(), mask.tolist(), strict=True):
        i = 0
        while i < len(row):
            if row[i] != SPECIAL_IDS.bos:
                i += 1
                continue
            j = i + 1
            while j < len(row) and not m[j]:
                j += 1
            k = j
            while k < len(row) and m[k]:
                k += 1
            if j < len(row) and row[k - 1] == SPECIAL_IDS.eos:
                out.append((row[i:j], row[j:k]))
            i = k
    return out


@torch.no_grad()
def _greedy(model: GPTTransformer, prompt: list[int], max_new: int) -> list[int]:
    """Greedy decoding with the KV cache: feed the prompt once, then one token at a time."""
    ids = torch.tensor([prompt])
    logits, past = model(ids, use_cache=True)
    out: list[int] = []
    for _ in range(max_new):
        nxt = int(logits[0, -1].argmax())
        out.append(nxt)
        if nxt == SPECIAL_IDS.eos or len(prompt) + len(out) >= model.config.max_seq_len:
            break
        logits, past = model(torch.tensor([[nxt]]), past_key_values=past, use_cache=True)
    return out


def test_tiny_model_learns_its_facts_and_answers_unseen_phrasings(tmp_path: Path) -> None:
    torch.set_num_threads(2)
    synth = data_mod.synth(30, 0)
    qa = tmp_path / "facts.txt"
    synth.write(qa)
    train_tokenizer(qa, tmp_path / "tok", vocab_size=600)
    tokenize_dataset(qa, tmp_path / "tok.model", tmp_path / "data", max_length=64, train_split=0.9, seed=0)
    data = tmp_path / "data"

    result = train_model(
        TrainingConfig(
            model_size="tiny",
            d_model=128,
            n_layers=3,
            n_heads=4,
            d_ff=384,
            dropout=0.0,
            batch_size=8,
            num_epochs=60,
            learning_rate=3e-3,
            warmup_steps=30,
            weight_decay=0.0,
            train_data_path=str(data / "train.npy"),
            val_data_path=str(data / "val.npy"),
            checkpoint_dir=str(tmp_path / "ck"),
            device="cpu",
            seed=0,
            keep_last=1,
            progress=False,
        )
    )
    assert result.stopped == "completed"
    assert result.train_loss is not None and result.train_loss < 0.1

    state = load_checkpoint(tmp_path / "ck" / f"checkpoint_epoch_{result.epoch}.pt")
    model = GPTTransformer(ModelConfig.from_dict(state["model_config"]))
    model.load_state_dict(state["model_state_dict"])
    model.eval()
    tok = Tokenizer(tmp_path / "tok.model")

    pairs = _pairs_in_rows(np.load(data / "train.npy"), np.load(data / "train.mask.npy"))
    assert len(pairs) >= 75  # nearly all 81 training pairs fit whole in 64-token windows
    hits = 0
    misses = []
    for prompt, answer in pairs:
        got = _greedy(model, prompt, max_new=len(answer) + 8)
        if got == answer:
            hits += 1
        else:
            misses.append((tok.decode(prompt), tok.decode(answer), tok.decode(got)))
    rate = hits / len(pairs)
    print(f"exact match on training questions: {hits}/{len(pairs)} = {rate:.1%} ({result.steps} steps)")
    assert rate >= EXACT_MATCH_THRESHOLD, misses[:5]

    # Generalisation: the held-out phrasings synth wrote (never in facts.txt), same greedy decoding.
    held_hits = 0
    held_misses = []
    for pair in synth.heldout:
        ids, mask = tok.encode_pair(pair.question, pair.answer)
        start = list(mask).index(1)
        prompt, answer = list(ids[:start]), list(ids[start:])
        got = _greedy(model, prompt, max_new=len(answer) + 8)
        if got == answer:
            held_hits += 1
        else:
            held_misses.append((pair.question, pair.answer, tok.decode(got)))
    held_rate = held_hits / len(synth.heldout)
    print(f"exact match on held-out phrasings: {held_hits}/{len(synth.heldout)} = {held_rate:.1%}")
    assert len(synth.heldout) == 30  # one unseen phrasing per fact
    assert held_rate >= HELDOUT_EXACT_MATCH_THRESHOLD, held_misses[:5]
