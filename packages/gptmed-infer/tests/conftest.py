"""Session fixtures: a small Q&A corpus, a real SentencePiece tokenizer, a briefly trained tiny
GPTTransformer saved as a checkpoint in gptmed-train's format (docs/training.md, "Checkpoints"),
and one exported bundle."""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
from gptmed.core import CheckpointManifest, ModelConfig, QAPair, write_qa_text

FACTS = [
    ("fever", "a body temperature above 38 degrees"),
    ("insulin", "a hormone that lowers blood sugar"),
    ("aspirin", "a medicine for pain and fever"),
    ("anemia", "a lack of red blood cells"),
    ("asthma", "a disease that narrows the airways"),
    ("migraine", "a strong headache with nausea"),
    ("café au lait spot", "a flat brown mark on the skin, naïve to treatment"),
    ("腎臓", "the kidney (腎臓) filters the blood"),
    ("vitamin C", "a vitamin found in citrus fruit"),
    ("a fracture", "a broken bone"),
    ("influenza", "a viral infection of the airways"),
    ("hypertension", "high blood pressure"),
]
TEMPLATES = ["What is {}?", "Explain {}.", "Tell me about {}."]


def make_pairs() -> list[QAPair]:
    pairs = []
    for term, answer in FACTS:
        for t in TEMPLATES:
            pairs.append(QAPair(t.format(term), answer[0].upper() + answer[1:] + "."))
    return pairs


@dataclass(frozen=True)
class Artifacts:
    root: Path
    qa: Path
    tokenizer: Path
    checkpoint: Path
    bundle: Path
    config: ModelConfig


def _train_model(pairs: list[QAPair], tokenizer_path: Path, config: ModelConfig, steps: int = 150):  # type: ignore[no-untyped-def]
    import torch
    from gptmed.model import GPTTransformer
    from gptmed.tokenizer import Tokenizer

    tok = Tokenizer(tokenizer_path)
    torch.manual_seed(0)
    torch.set_num_threads(1)  # tiny ops on a shared 2-core box: one thread is fastest
    model = GPTTransformer(config)
    rows = [tok.encode_pair(p.question, p.answer)[0] for p in pairs]
    width = max(len(r) for r in rows)
    assert width <= config.max_seq_len, width
    x = torch.zeros((len(rows), width), dtype=torch.int64)
    for i, r in enumerate(rows):
        x[i, : len(r)] = torch.tensor(r)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    model.train()
    for _ in range(steps):
        logits = model(x[:, :-1])
        y = x[:, 1:].clone()
        y[y == 0] = -100
        loss = torch.nn.functional.cross_entropy(
            logits.reshape(-1, logits.size(-1)), y.reshape(-1), ignore_index=-100
        )
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    return model, tok, float(loss.item())


def save_checkpoint(
    model, tok, path: Path, config: ModelConfig, *, tokenizer_path: Path | None = None
) -> Path:  # type: ignore[no-untyped-def]
    import torch

    manifest = CheckpointManifest(
        model_config=config,
        step=1,
        epoch=0,
        tokenizer_sha256=tok.sha256,
        extra={
            "tokenizer_path": str((tokenizer_path or tok.model_path).resolve()),
            "dataset_dir": "",
            "val_loss": None,
        },
    )
    ckpt = {
        "model_state_dict": model.state_dict(),
        "optimizer_state_dict": {},
        "scheduler_state_dict": {},
        "scaler_state_dict": {},
        "rng_state": {"torch": torch.get_rng_state()},
        "step": 1,
        "epoch": 0,
        "position": 0,
        "model_config": config.to_dict(),
        "training_config": {},
        "manifest": manifest.to_dict(),
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(ckpt, path)
    return path


def build_artifacts(root: Path, quantize: str | None = "int8") -> Artifacts:
    from gptmed.inference.export import export_bundle
    from gptmed.tokenizer import train_tokenizer

    root.mkdir(parents=True, exist_ok=True)
    pairs = make_pairs()
    qa = root / "qa.txt"
    write_qa_text(qa, pairs, overwrite=True)
    train_tokenizer(qa, root / "tok", vocab_size=400, model_type="bpe", character_coverage=1.0)
    tokenizer = root / "tok.model"
    config = ModelConfig(
        vocab_size=400, d_model=48, n_layers=2, n_heads=4, d_ff=128, max_seq_len=96, dropout=0.0
    )
    model, tok, _loss = _train_model(pairs, tokenizer, config)
    checkpoint = save_checkpoint(model, tok, root / "model" / "checkpoints" / "best_model.pt", config)
    bundle = export_bundle(checkpoint, root / "bundle", quantize=quantize)
    return Artifacts(root, qa, tokenizer, checkpoint, bundle, config)


@pytest.fixture(scope="session")
def artifacts(tmp_path_factory: pytest.TempPathFactory) -> Artifacts:
    pytest.importorskip("torch")
    return build_artifacts(tmp_path_factory.mktemp("infer"))


@pytest.fixture(scope="session")
def onnx_gen(artifacts: Artifacts):  # type: ignore[no-untyped-def]
    from gptmed.inference import TextGenerator

    return TextGenerator.from_bundle(artifacts.bundle)


@pytest.fixture(scope="session", params=["fp32", "int8"])
def variant_gen(request: pytest.FixtureRequest, artifacts: Artifacts, onnx_gen):  # type: ignore[no-untyped-def]
    """The bundle's fp32 generator, then its int8 one: for what both graphs must do."""
    from gptmed.inference import TextGenerator

    return (
        onnx_gen if request.param == "fp32" else TextGenerator.from_bundle(artifacts.bundle, variant="int8")
    )


@pytest.fixture(scope="session")
def torch_gen(artifacts: Artifacts):  # type: ignore[no-untyped-def]
    from gptmed.inference import TextGenerator

    return TextGenerator(model=str(artifacts.checkpoint))


@pytest.fixture()
def fresh_python() -> str:
    return sys.executable
