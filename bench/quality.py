"""Quality per minute: gptmed with default flags and a time budget vs a plain HF loop, same run.

Both sides get the same training time on the same machine, the same tokenizer and the same
training pairs, and are scored on the same held-out pairs:

* gptmed: ``gptmed pipeline MEDQUAD --out W --time-budget B --test-fraction 0.1 --seed 0``, default
  flags (the pipeline picks the vocabulary, context and model size; gptmed-train the learning
  rate, warmup and dropout). Its ``data/test.txt`` (``gptmed-data split``, seeded) is the held-out
  split of every score below; its ``data/train.txt`` and tokenizer are what the HF side trains on.
* HF: ``GPT2LMHeadModel`` of the shape gptmed chose (width, depth, heads, d_ff, vocab, context),
  GPT-2's defaults otherwise (dropout 0.1 on the CPU; 0.0 on a GPU, as issue 19's GPU anchor),
  AdamW at LR 1e-3 (width <= 256, issue 19's CPU anchor) or 6e-4 (wider), loss on every token, a
  plain loop over the training pairs (``<bos>Q: ...\\nA: ...<eos>``, the same template) concatenated
  into context-long blocks, until the same budget runs out.
* Scores: answer bits per byte on every held-out pair (:func:`gptmed.inference.evaluate.score_answers`,
  the same code for both models: teacher forced, answer tokens + EOS, windowed past the context);
  then 50 held-out questions whose reference answer fits in 256 tokens are answered with room for
  448 new tokens, greedy and sampled, through the same :class:`~gptmed.inference.TextGenerator`
  and decoding defaults (the HF model behind a KV-cache backend): the share that ends with EOS and
  the loop rate.

    python bench/quality.py                          # CPU: 600 s each side
    python bench/quality.py --device cuda --budget 60  # GPU
    python bench/quality.py --smoke                  # the embedded sample, 15 s budgets (CI smoke)

Skips (exit 0) when MedQuAD's train.qa.txt.gz is absent from ../shared/datasets/medquad/ and from
shared/datasets/medquad/ inside the checkout (not with --smoke).
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
MEDQUAD_NAME = Path("datasets") / "medquad" / "train.qa.txt.gz"
# ../shared beside the checkout; shared/ inside it is what travels to a GPU machine
MEDQUAD_PLACES = (ROOT / ".." / "shared" / MEDQUAD_NAME, ROOT / "shared" / MEDQUAD_NAME)
QUESTIONS = 50  # held-out questions answered for the EOS share and the loop rate
REFERENCE_FITS = 256  # ... whose reference answer fits in this many tokens
NEW_TOKENS = 448  # room for new tokens when answering


# ---------------------------------------------------------------------------------------- gptmed side
def run_gptmed(data: Path, work: Path, args: argparse.Namespace) -> dict[str, Any]:
    """The user's command: ``gptmed pipeline`` with default flags and the time budget."""
    out = work / "gptmed"
    cmd = [
        sys.executable, "-c", "from gptmed.cli.main import main; main()", "pipeline", str(data), "--out", str(out),
        "--time-budget", f"{args.budget}s", "--device", args.device, "--test-fraction", "0.1", "--seed", "0",
    ]  # fmt: skip
    t0 = time.time()
    done = subprocess.run(cmd, capture_output=True, text=True, env=_env(args), check=False)
    if done.returncode != 0:
        raise SystemExit(f"gptmed pipeline failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    state = json.loads((out / "pipeline.json").read_text())
    import torch

    ckpt = torch.load(out / "model" / "checkpoints" / "best_model.pt", weights_only=True, map_location="cpu")
    last = max(out.glob("model/checkpoints/checkpoint_*.pt"), key=lambda p: p.stat().st_mtime)
    final = torch.load(last, weights_only=True, map_location="cpu")
    chosen = [line.strip() for line in done.stdout.splitlines() if line.strip().startswith("--")]
    return {
        "out": out,
        "seconds_total": time.time() - t0,
        "train_seconds": state["steps"]["train"]["seconds"],
        "tokens_seen": final["trainer_state"].get("tokens_seen", 0),
        "steps": final["step"],
        "model_config": ckpt["model_config"],
        "training_config": ckpt["training_config"],
        "choices": chosen,
    }


# ---------------------------------------------------------------------------------------- HF side
def _hf_model(model_config: dict[str, Any], dropout: float) -> Any:
    from transformers import GPT2Config, GPT2LMHeadModel

    cfg = GPT2Config(
        vocab_size=model_config["vocab_size"],
        n_positions=model_config["max_seq_len"],
        n_embd=model_config["d_model"],
        n_layer=model_config["n_layers"],
        n_head=model_config["n_heads"],
        n_inner=model_config["d_ff"],
        resid_pdrop=dropout,
        embd_pdrop=dropout,
        attn_pdrop=dropout,
        tie_word_embeddings=True,
        bos_token_id=2,
        eos_token_id=3,
        pad_token_id=0,
    )
    cfg._attn_implementation = "sdpa"
    return GPT2LMHeadModel(cfg)


def child_hf(args: argparse.Namespace) -> dict[str, Any]:
    """Train the HF model for ``--budget`` seconds on the gptmed run's training pairs; save it."""
    import numpy as np
    import torch
    from gptmed.core import SPECIAL_IDS, read_qa_text
    from gptmed.tokenizer import Tokenizer

    torch.manual_seed(0)
    work = Path(args.work)
    gm = json.loads((work / "gptmed.json").read_text())
    mc = gm["model_config"]
    device = torch.device(args.device)
    tok = Tokenizer(work / "gptmed" / "tokenizer" / "tokenizer.model")
    stream: list[int] = []
    for pair in read_qa_text(work / "gptmed" / "data" / "train.txt"):
        prompt, answer = tok.encode_pair(pair.question, pair.answer)
        stream += [SPECIAL_IDS.bos, *prompt, *answer, SPECIAL_IDS.eos]
    T = mc["max_seq_len"]
    blocks = torch.tensor(np.asarray(stream[: len(stream) // T * T], dtype=np.int64).reshape(-1, T))
    wide = mc["d_model"] > 256
    model = _hf_model(mc, dropout=0.0 if device.type == "cuda" else 0.1).to(device).train()
    opt = torch.optim.AdamW(model.parameters(), lr=6e-4 if wide else 1e-3)
    batch = gm["training_config"]["batch_size"]
    gen = torch.Generator().manual_seed(0)
    order = torch.randperm(len(blocks), generator=gen)
    tokens, steps, pos = 0, 0, 0
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")
    t0 = time.time()
    while time.time() - t0 < args.budget:
        if pos + batch > len(blocks):
            order, pos = torch.randperm(len(blocks), generator=gen), 0
        x = blocks[order[pos : pos + batch]].to(device)
        pos += batch
        with autocast:
            loss = model(input_ids=x, labels=x).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        tokens += x.numel()
        steps += 1
    seconds = time.time() - t0
    model.save_pretrained(work / "hf")
    return {"train_seconds": seconds, "tokens_seen": tokens, "steps": steps, "blocks": len(blocks)}


class HFBackend:
    """A Hugging Face causal LM behind gptmed's backend calls (numpy in and out), so that the same
    :class:`~gptmed.inference.TextGenerator`, sampler and scorer run it."""

    name = "transformers"

    def __init__(self, model: Any, config: Any) -> None:
        self.model, self.config = model.eval(), config

    def _run(self, ids: Any, mask: Any, past: Any = None) -> tuple[Any, Any]:
        import numpy as np
        import torch

        full = torch.from_numpy(np.asarray(mask, dtype=np.int64))
        positions = (full.cumsum(-1) - 1).clamp(min=0)[:, -ids.shape[1] :]
        with torch.no_grad():
            out = self.model(
                input_ids=torch.from_numpy(np.asarray(ids, dtype=np.int64)),
                attention_mask=full,
                position_ids=positions,
                past_key_values=past,
                use_cache=True,
            )
        return out.logits.float().numpy(), out.past_key_values

    def prefill(self, input_ids: Any, attention_mask: Any, capacity: int | None = None) -> tuple[Any, Any]:
        logits, past = self._run(input_ids, attention_mask)
        return logits[:, -1], {"past": past, "mask": attention_mask}

    def decode(self, state: dict[str, Any], tokens: Any) -> Any:
        import numpy as np

        state["mask"] = np.concatenate([state["mask"], np.ones((len(tokens), 1), dtype=np.int64)], axis=1)
        logits, state["past"] = self._run(np.asarray(tokens).reshape(-1, 1), state["mask"], state["past"])
        return logits[:, -1]

    def forward(self, input_ids: Any, attention_mask: Any) -> Any:
        return self._run(input_ids, attention_mask)[0]


# ---------------------------------------------------------------------------------------- scoring
def child_score(args: argparse.Namespace) -> dict[str, Any]:
    """Both models on the held-out pairs: BPB on all of them, EOS share and loop rate on 50."""
    import random

    import torch
    from gptmed.core import ModelConfig, read_qa_text
    from gptmed.inference import TextGenerator
    from gptmed.inference.evaluate import evaluate, score_answers
    from transformers import GPT2LMHeadModel

    torch.set_num_threads(args.threads)
    work = Path(args.work)
    run = work / "gptmed"
    tok_path = run / "tokenizer" / "tokenizer.model"
    held_out = list(read_qa_text(run / "data" / "test.txt"))
    ours = TextGenerator.from_bundle(run / "bundle")
    config = ModelConfig.from_dict(json.loads((work / "gptmed.json").read_text())["model_config"])
    theirs = TextGenerator(
        model=HFBackend(GPT2LMHeadModel.from_pretrained(work / "hf"), config), tokenizer_path=tok_path
    )
    fits = [p for p in held_out if len(ours.tokenizer.encode(p.answer)) + 1 <= REFERENCE_FITS]
    picked = random.Random(0).sample(fits, k=min(QUESTIONS, len(fits)))
    out: dict[str, Any] = {"held_out": len(held_out), "fits": len(fits), "asked": len(picked)}
    decoding = ours.defaults  # the bundle's decoding defaults, for both models
    for side, gen in (("gptmed", ours), ("hf", theirs)):
        scores = score_answers(gen, gen.tokenizer, held_out)
        row: dict[str, Any] = {"bpb": scores.bits_per_byte, "windowed": scores.windowed}
        for mode, config in (
            ("greedy", decoding.replace(temperature=0.0)),
            ("sampled", decoding.replace(seed=0)),
        ):
            # each answer stops at EOS or after NEW_TOKENS tokens (fewer where the question leaves less room)
            report = evaluate(gen, picked, max_length=NEW_TOKENS, decoding=config, examples=2)
            row[f"eos_{mode}"], row[f"loop_{mode}"] = report.eos_share, report.loop_rate
            row[f"examples_{mode}"] = report.examples
        out[side] = row
    return out


# ---------------------------------------------------------------------------------------- driver
def _env(args: argparse.Namespace) -> dict[str, str]:
    return dict(os.environ, OMP_NUM_THREADS=str(args.threads), PYTHONUNBUFFERED="1")


def _child(kind: str, args: argparse.Namespace) -> dict[str, Any]:
    cmd = [sys.executable, __file__, "--child", kind, "--work", args.work, "--device", args.device]
    cmd += ["--budget", str(args.budget), "--threads", str(args.threads)]
    done = subprocess.run(cmd, capture_output=True, text=True, env=_env(args), check=False)
    if done.returncode != 0:
        raise SystemExit(f"{kind} child failed:\n{done.stderr[-3000:]}")
    return dict(json.loads(done.stdout.strip().splitlines()[-1]))


def _source(args: argparse.Namespace, work: Path) -> Path | None:
    if args.smoke:
        from gptmed.data import sample_path

        return Path(sample_path())
    found = [p for p in MEDQUAD_PLACES if p.is_file()]
    if not found:
        return None
    raw = work / "medquad.txt"
    with gzip.open(found[0], "rb") as src, open(raw, "wb") as dst:
        shutil.copyfileobj(src, dst)
    return raw


def report(args: argparse.Namespace, ours: dict[str, Any], hf: dict[str, Any], scores: dict[str, Any]) -> str:
    mc = ours["model_config"]
    g, h = scores["gptmed"], scores["hf"]
    below = 1 - g["bpb"] / h["bpb"]
    goal = 0.25 if args.device == "cpu" else 0.10
    lines = [
        "# Quality per minute (bench/quality.py)",
        "",
        f"- date: {datetime.now(timezone.utc).strftime('%Y-%m-%d %H:%M UTC')}; machine: {platform.machine()}, "
        f"{os.cpu_count()} CPUs, {args.threads} threads, device {args.device}; budget {args.budget:g} s per side",
        f"- command: `python bench/quality.py --device {args.device} --budget {args.budget:g}`",
        f"- gptmed chose: {'; '.join(ours['choices'])}",
        f"- model: d_model {mc['d_model']}, {mc['n_layers']} layers, {mc['n_heads']} heads, context {mc['max_seq_len']}, "
        f"vocab {mc['vocab_size']}; held-out pairs {scores['held_out']}; EOS/loop on {scores['asked']} of "
        f"{scores['fits']} held-out questions whose reference fits in {REFERENCE_FITS} tokens, {NEW_TOKENS} new tokens",
        "",
        "| side | train s | tokens seen | answer BPB | ends with EOS (greedy / sampled) | loops (greedy / sampled) |",
        "|---|---:|---:|---:|---|---|",
    ]
    for name, side, sc in (
        ("gptmed (default flags, --time-budget)", ours, g),
        ("HF GPT-2 plain loop", hf, h),
    ):
        lines.append(
            f"| {name} | {side['train_seconds']:.0f} | {side['tokens_seen']:,} | {sc['bpb']:.3f} | "
            f"{sc['eos_greedy']:.0%} / {sc['eos_sampled']:.0%} | {sc['loop_greedy']:.0%} / {sc['loop_sampled']:.0%} |"
        )
    lines += ["", f"gptmed's answer BPB is **{below:.1%} below** the HF loop's (goal >= {goal:.0%})."]
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--child", choices=["hf", "score"])
    ap.add_argument("--work", default=None, help="working folder (default: a new temp folder)")
    ap.add_argument("--device", default="cpu", help="cpu or cuda")
    ap.add_argument("--budget", type=float, default=None, help="training seconds per side (cpu 600, cuda 60)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--smoke", action="store_true", help="the embedded sample with 15 s budgets (CI)")
    ap.add_argument("--out", default=None, help="also write the markdown report here")
    args = ap.parse_args()
    if args.budget is None:
        args.budget = 15.0 if args.smoke else (600.0 if args.device == "cpu" else 60.0)
    if args.child:
        result = child_hf(args) if args.child == "hf" else child_score(args)
        print(json.dumps(result))
        return
    work = Path(args.work or tempfile.mkdtemp(prefix="gptmed-bench-quality-"))
    work.mkdir(parents=True, exist_ok=True)
    args.work = str(work)
    source = _source(args, work)
    if source is None:
        print(f"skipped: MedQuAD not found (../shared/{MEDQUAD_NAME}, shared/{MEDQUAD_NAME})")
        return
    ours = run_gptmed(source, work, args)
    print(
        f"gptmed: {ours['steps']} steps, {ours['tokens_seen']:,} tokens in {ours['train_seconds']:.0f} s",
        flush=True,
    )
    (work / "gptmed.json").write_text(
        json.dumps({"model_config": ours["model_config"], "training_config": ours["training_config"]})
    )
    hf = _child("hf", args)
    print(f"hf: {hf['steps']} steps, {hf['tokens_seen']:,} tokens in {hf['train_seconds']:.0f} s", flush=True)
    scores = _child("score", args)
    text = report(args, ours, hf, scores)
    print(text)
    if args.out:
        Path(args.out).write_text(text, encoding="utf-8")


if __name__ == "__main__":
    main()
