"""Generation speed: gptmed's onnxruntime runtime (fp32, int8) vs its torch KV-cache backend vs
Hugging Face ``GPT2LMHeadModel.generate`` of the same size, on the same weights and prompts.

    python bench/generate.py [--size small] [--batches 1 8] [--prompt-len 32] [--new-tokens 128]
                             [--repeats 3] [--workdir /tmp/gptmed-bench-generate] [--json out.json]

Greedy, exactly ``--new-tokens`` tokens per row (EOS ignored), prompts of ``--prompt-len`` tokens.
Reports tokens/s (batch * new tokens / total time), ms per decode step, time to first token,
cold start of the ``gptmed-generate`` process (start to first token, bundle, --max-length 1),
and installed sizes of gptmed-infer's runtime dependencies vs torch's. Also one onnxruntime
prefill with logits at every prompt position vs the last only (``num_logits_to_keep``), at each
batch size and at 1 x 256 tokens.

Weights: a ``GPTTransformer`` of the preset with random init (speed does not depend on the
values); the tokenizer is trained on MedQuAD (../shared/datasets/medquad) or, if absent, on a
generated corpus. The HF model gets the same tensors (GPT-2 block layout: learned positions,
``use_rope=False``, so the two compute the same function).
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import json
import os
import platform
import random
import statistics
import subprocess
import sys
import time
from importlib.metadata import PackageNotFoundError, distribution
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
PAUSE_S = 0.5  # between engines, see interleaved()


# ----------------------------------------------------------------------------------- artifacts


def _corpus(path: Path, pairs: int = 3000) -> None:
    from gptmed.core import QAPair, write_qa_text

    medquad = REPO / ".." / "shared" / "datasets" / "medquad" / "train.qa.txt.gz"
    if medquad.is_file():
        with gzip.open(medquad, "rt", encoding="utf-8") as fh:
            text = fh.read()
        records = text.split("\n\n")[:pairs]
        path.write_text("\n\n".join(records) + "\n", encoding="utf-8")
        return
    # No MedQuAD beside the checkout: made-up words of letters (SentencePiece splits digits, so
    # numbered words could not fill a vocabulary of 8000).
    rng = random.Random(0)
    letters = "abcdefghijklmnopqrstuvwxyz"
    words = ["".join(rng.choices(letters, k=rng.randint(3, 10))) for _ in range(20000)]
    items = [
        QAPair(" ".join(rng.choices(words, k=8)) + "?", " ".join(rng.choices(words, k=30)))
        for _ in range(pairs)
    ]
    write_qa_text(path, items, overwrite=True)


def _exporter_digest() -> str:
    """sha256 of the exporter's source files: a bundle cached by another exporter is rebuilt."""
    import gptmed.inference.export as export

    digest = hashlib.sha256()
    for source in sorted(Path(export.__file__).parent.glob("*.py")):
        digest.update(source.read_bytes())
    return digest.hexdigest()


def build(workdir: Path, size: str) -> tuple[Path, Path]:
    """(checkpoint, bundle) for the preset ``size`` with random weights, cached in ``workdir``."""
    import torch
    from gptmed.core import BundleManifest, CheckpointManifest, get_config
    from gptmed.inference.bundle import GRAPH_LAYOUT
    from gptmed.inference.export import export_bundle
    from gptmed.model import GPTTransformer
    from gptmed.tokenizer import Tokenizer, train_tokenizer

    workdir.mkdir(parents=True, exist_ok=True)
    ckpt = workdir / f"{size}.pt"
    bundle = workdir / f"bundle-{size}"
    bundle_json = bundle / "gptmed.json"
    stamp = workdir / f"bundle-{size}.exporter"  # the exporter that wrote the cached bundle
    if (
        ckpt.is_file()
        and bundle_json.is_file()
        and BundleManifest.load(bundle_json).extra.get("graph_layout") == GRAPH_LAYOUT
        and stamp.is_file()
        and stamp.read_text() == _exporter_digest()
    ):
        return ckpt, bundle  # a bundle of another layout or exporter is re-exported below, by this one
    tok_path = workdir / "tok.model"
    if not tok_path.is_file():
        _corpus(workdir / "qa.txt")
        train_tokenizer(workdir / "qa.txt", workdir / "tok", vocab_size=8000)
    tok = Tokenizer(tok_path)
    config = get_config(size, vocab_size=tok.vocab_size).replace(use_rope=False, dropout=0.0)
    torch.manual_seed(0)
    model = GPTTransformer(config).eval()
    manifest = CheckpointManifest(
        model_config=config,
        step=0,
        epoch=0,
        tokenizer_sha256=tok.sha256,
        extra={"tokenizer_path": str(tok_path.resolve())},
    )
    torch.save(
        {
            "model_state_dict": model.state_dict(),
            "model_config": config.to_dict(),
            "manifest": manifest.to_dict(),
        },
        ckpt,
    )
    export_bundle(
        ckpt, bundle, quantize="int8", min_int8_agreement=0.0
    )  # random weights: agreement is reported
    stamp.write_text(_exporter_digest())
    return ckpt, bundle


def hf_model(gpt: object) -> object:
    """A GPT2LMHeadModel holding ``gpt``'s weights (GPTTransformer with use_rope=False)."""
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    c = gpt.config  # type: ignore[attr-defined]
    hf = GPT2LMHeadModel(
        GPT2Config(
            vocab_size=c.vocab_size,
            n_positions=c.max_seq_len,
            n_embd=c.d_model,
            n_layer=c.n_layers,
            n_head=c.n_heads,
            n_inner=c.d_ff,
            activation_function="gelu_new" if c.activation == "gelu_tanh" else "gelu",  # the same function
            resid_pdrop=0.0,
            embd_pdrop=0.0,
            attn_pdrop=0.0,
            layer_norm_epsilon=1e-5,
            tie_word_embeddings=True,
        )
    ).eval()
    sd = gpt.state_dict()  # type: ignore[attr-defined]
    new = {
        "transformer.wte.weight": sd["tok_emb.weight"],
        "transformer.wpe.weight": sd["pos_emb.weight"],
        "transformer.ln_f.weight": sd["ln_f.weight"],
        "transformer.ln_f.bias": sd["ln_f.bias"],
    }
    for i in range(c.n_layers):
        p, q = f"blocks.{i}.", f"transformer.h.{i}."
        new[q + "ln_1.weight"], new[q + "ln_1.bias"] = sd[p + "ln1.weight"], sd[p + "ln1.bias"]
        new[q + "ln_2.weight"], new[q + "ln_2.bias"] = sd[p + "ln2.weight"], sd[p + "ln2.bias"]
        new[q + "attn.c_attn.weight"], new[q + "attn.c_attn.bias"] = (
            sd[p + "attn.qkv.weight"].T,
            sd[p + "attn.qkv.bias"],
        )
        new[q + "attn.c_proj.weight"], new[q + "attn.c_proj.bias"] = (
            sd[p + "attn.proj.weight"].T,
            sd[p + "attn.proj.bias"],
        )
        new[q + "mlp.c_fc.weight"], new[q + "mlp.c_fc.bias"] = (
            sd[p + "mlp.fc.weight"].T,
            sd[p + "mlp.fc.bias"],
        )
        new[q + "mlp.c_proj.weight"], new[q + "mlp.c_proj.bias"] = (
            sd[p + "mlp.proj.weight"].T,
            sd[p + "mlp.proj.bias"],
        )
    missing, _unexpected = hf.load_state_dict({k: v.contiguous() for k, v in new.items()}, strict=False)
    assert all("attn.bias" in m or "masked_bias" in m or m == "lm_head.weight" for m in missing), missing
    hf.tie_weights()
    with torch.no_grad():
        x = torch.randint(4, c.vocab_size, (1, 8))
        diff = (hf(x).logits - gpt(x)).abs().max().item()  # type: ignore[operator]
    assert diff < 1e-3, f"HF copy differs from GPTTransformer by {diff}"
    return hf


# ----------------------------------------------------------------------------------- timing


def run_ours(gen: object, prompts: list[list[int]], new: int) -> tuple[float, float]:
    """(total seconds, seconds to the first token) of one greedy TextGenerator run, EOS ignored;
    no frequency penalty, as HF generate's greedy search has none."""
    cfg = gen.defaults.replace(temperature=0.0, frequency_penalty=0.0, max_length=new)  # type: ignore[attr-defined]
    start = time.perf_counter()
    events = gen._token_events(prompts, cfg, lambda _r: False, ignore_eos=True)  # type: ignore[attr-defined]
    next(events)
    ttft = time.perf_counter() - start
    n = 1 + sum(1 for _ in events)
    total = time.perf_counter() - start
    assert n == new * len(prompts), n
    return total, ttft


def run_hf(hf: object, prompts: list[list[int]], new: int) -> tuple[float, float]:
    import torch

    ids = torch.tensor(prompts)
    kw = {"do_sample": False, "pad_token_id": 0, "eos_token_id": None, "attention_mask": torch.ones_like(ids)}
    with torch.inference_mode():
        start = time.perf_counter()
        hf.generate(ids, max_new_tokens=1, min_new_tokens=1, **kw)  # type: ignore[attr-defined]
        ttft = time.perf_counter() - start
        start = time.perf_counter()
        out = hf.generate(ids, max_new_tokens=new, min_new_tokens=new, **kw)  # type: ignore[attr-defined]
        total = time.perf_counter() - start
    assert out.shape[1] == ids.shape[1] + new
    return total, ttft


def interleaved(
    runners: dict[str, object], prompts: list[list[int]], new: int, repeats: int
) -> dict[str, dict[str, float]]:
    """Every engine once per round (after a warm-up round), so load on a shared machine hits all alike.

    A short pause before each run lets the previous engine's worker threads (OpenMP, onnxruntime)
    stop spinning: in production one process runs one engine, and without the pause the engine
    that follows another pays for its idle spinning (int8 batch 1: 1.43 vs 0.97 ms per step)."""
    times: dict[str, list[tuple[float, float]]] = {name: [] for name in runners}
    for round_ in range(repeats + 1):
        for name, run in runners.items():
            time.sleep(PAUSE_S)
            result = run(prompts, new)  # type: ignore[operator]
            if round_:
                times[name].append(result)
    out = {}
    for name, results in times.items():
        total = statistics.median(r[0] for r in results)
        ttft = statistics.median(r[1] for r in results)
        out[name] = {
            "tok_s": len(prompts) * new / total,
            "ms_per_token": (total - ttft) * 1000 / max(new - 1, 1),  # per decode step (all rows)
            "ttft_ms": ttft * 1000,
        }
    return out


def random_prompts(rng: np.random.Generator, batch: int, width: int, vocab: int) -> list[list[int]]:
    """``batch`` prompts of ``width`` ids: BOS, then random ids above the special ones."""
    from gptmed.core import SPECIAL_IDS

    first = max(SPECIAL_IDS.pad, SPECIAL_IDS.unk, SPECIAL_IDS.bos, SPECIAL_IDS.eos) + 1
    return [[SPECIAL_IDS.bos, *rng.integers(first, vocab, size=width - 1).tolist()] for _ in range(batch)]


def prefill_ab(gen: object, prompts: list[list[int]], repeats: int = 15) -> tuple[float, float]:
    """Median ms of one onnxruntime prefill with logits at every prompt position (what a graph
    without ``num_logits_to_keep`` computes) and with only the last position's, interleaved."""
    backend = gen.backend  # type: ignore[attr-defined]
    ids = np.asarray(prompts, dtype=np.int64)
    mask = np.ones_like(ids)
    times: dict[bool, list[float]] = {False: [], True: []}
    for round_ in range(repeats + 1):
        for last_only in (False, True):
            start = time.perf_counter()
            backend._first_run(ids, mask, ids.shape[1] + 1, last_only=last_only)
            if round_:
                times[last_only].append(time.perf_counter() - start)
    return statistics.median(times[False]) * 1e3, statistics.median(times[True]) * 1e3


def cold_start(bundle: Path, runs: int = 3) -> float:
    """Seconds from process start to the first token printed by gptmed-generate (median)."""
    exe = Path(sys.executable).parent / "gptmed-generate"
    cmd = [
        str(exe),
        "--checkpoint",
        str(bundle),
        "--prompt",
        "What is glaucoma?",
        "--max-length",
        "1",
        "--temperature",
        "0",
    ]
    times = []
    for _ in range(runs + 1):
        start = time.perf_counter()
        subprocess.run(cmd, check=True, capture_output=True)
        times.append(time.perf_counter() - start)
    return statistics.median(times[1:])


def import_time(module: str) -> float:
    out = subprocess.run(
        [
            sys.executable,
            "-c",
            f"import time; t = time.perf_counter(); import {module}; print(time.perf_counter() - t)",
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    return float(out.stdout)


def _closure(names: list[str]) -> set[str]:
    from packaging.requirements import Requirement

    seen: set[str] = set()
    todo = list(names)
    while todo:
        name = todo.pop().lower().replace("_", "-")
        if name in seen:
            continue
        try:
            dist = distribution(name)
        except PackageNotFoundError:
            continue
        seen.add(name)
        for req in dist.requires or []:
            r = Requirement(req)
            if r.marker is None or r.marker.evaluate({"extra": ""}):
                todo.append(r.name)
    return seen


def installed_mb(names: list[str]) -> float:
    total = 0
    for name in _closure(names):
        dist = distribution(name)
        for f in dist.files or []:
            p = Path(str(dist.locate_file(f)))
            if p.is_file():
                total += p.stat().st_size
    return total / 1e6


# ----------------------------------------------------------------------------------- main


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", default="small", choices=["tiny", "small", "medium"])
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 8])
    ap.add_argument("--prompt-len", type=int, default=32)
    ap.add_argument("--new-tokens", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/gptmed-bench-generate"))
    ap.add_argument("--skip", nargs="*", default=[], help="rows to skip: hf torch int8 cold prefill")
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="torch and onnxruntime threads")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    from gptmed.inference import TextGenerator
    from gptmed.inference.export.torch_backend import load_checkpoint_model

    ckpt, bundle = build(args.workdir, args.size)
    model, _ = load_checkpoint_model(ckpt)
    fp32 = TextGenerator.from_bundle(bundle, threads=args.threads)
    int8 = TextGenerator.from_bundle(bundle, variant="int8", threads=args.threads)
    tgen = TextGenerator(model=model, tokenizer_path=str(bundle / "tokenizer.model"))
    vocab = model.config.vocab_size
    rng = np.random.default_rng(0)
    rows: list[dict[str, object]] = []
    hf = hf_model(model) if "hf" not in args.skip else None
    for batch in args.batches:
        prompts = random_prompts(rng, batch, args.prompt_len, vocab)
        runners: dict[str, object] = {"onnxruntime fp32 (gptmed)": lambda p, n: run_ours(fp32, p, n)}
        if "int8" not in args.skip:
            runners["onnxruntime int8 (gptmed)"] = lambda p, n: run_ours(int8, p, n)
        if "torch" not in args.skip:
            runners["torch KV cache (gptmed)"] = lambda p, n: run_ours(tgen, p, n)
        if hf is not None:
            runners["HF GPT2LMHeadModel.generate"] = lambda p, n: run_hf(hf, p, n)
        for name, r in interleaved(runners, prompts, args.new_tokens, args.repeats).items():
            rows.append({"engine": name, "batch": batch, **{k: round(v, 2) for k, v in r.items()}})
            print(
                f"{name:<30} batch {batch}: {r['tok_s']:8.1f} tok/s  {r['ms_per_token']:6.2f} ms/step  "
                f"TTFT {r['ttft_ms']:6.1f} ms",
                flush=True,
            )
    for batch in args.batches:
        base = next((r for r in rows if r["batch"] == batch and str(r["engine"]).startswith("HF")), None)
        for r in rows:
            if r["batch"] == batch and base:
                r["x_hf"] = round(float(r["tok_s"]) / float(base["tok_s"]), 2)  # type: ignore[arg-type]
    extra: dict[str, object] = {}
    if "prefill" not in args.skip:
        shapes = [(batch, args.prompt_len) for batch in args.batches] + [(1, 256)]
        for name, gen in (("fp32", fp32), ("int8", int8)):
            for batch, width in shapes:
                prompts = random_prompts(rng, batch, width, vocab)
                all_ms, kept_ms = prefill_ab(gen, prompts)
                extra[f"prefill_ms_{name}_b{batch}_t{width}_all_vs_last"] = [
                    round(all_ms, 2),
                    round(kept_ms, 2),
                ]
                print(
                    f"prefill {name} {batch}x{width}: logits at every position {all_ms:6.2f} ms, "
                    f"last only {kept_ms:6.2f} ms ({all_ms / kept_ms:.2f}x)",
                    flush=True,
                )
    if "cold" not in args.skip:
        extra["cold_start_s"] = round(cold_start(bundle), 3)
        extra["import_torch_s"] = round(import_time("torch"), 3)
        extra["import_onnxruntime_s"] = round(import_time("onnxruntime"), 3)
    # what `pip install gptmed-infer` pulls: the package and its requirements, recursively
    extra["installed_mb_gptmed_infer_runtime"] = round(installed_mb(["gptmed-infer"]), 1)
    extra["installed_mb_torch"] = round(installed_mb(["torch"]), 1)
    extra["bundle_mb"] = {p.name: round(p.stat().st_size / 1e6, 2) for p in sorted(bundle.iterdir())}
    meta = {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, {platform.system()}",
        "load_avg": os.getloadavg(),
        "python": platform.python_version(),
        "size": args.size,
        "params": sum(p.numel() for p in model.parameters()),
        "command": "python " + " ".join(sys.argv),
        "threads": args.threads,
    }
    print(json.dumps({"meta": meta, "extra": extra}, indent=1))
    print("\n| engine | batch | tok/s | ms/step | TTFT ms | x HF |\n|---|---:|---:|---:|---:|---:|")
    for r in rows:
        print(
            f"| {r['engine']} | {r['batch']} | {r['tok_s']:.0f} | {r['ms_per_token']:.2f} | {r['ttft_ms']:.1f} | "
            f"{r.get('x_hf', float('nan')):.2f} |"
        )
    if args.json:
        args.json.write_text(json.dumps({"meta": meta, "rows": rows, "extra": extra}, indent=1))


if __name__ == "__main__":
    main()
