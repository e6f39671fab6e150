"""The user manual's Python API examples, as written, against a real trained checkpoint.

Step 5.2 builds `GPTTransformer(get_small_config())`, so its checkpoint must be a *small* model with
the default vocabulary of 8000: the fixture trains one (two optimizer steps are enough to make a
loadable checkpoint) on a synthetic fact set large enough for an 8000-piece tokenizer.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from conftest import run

MANUAL_5_2_AND_5_4 = """
import torch
from gptmed.inference.generator import TextGenerator
from gptmed.model.architecture import GPTTransformer
from gptmed.model.configs.model_config import get_small_config

# Load model
config = get_small_config()
model = GPTTransformer(config)

# Load trained checkpoint
checkpoint = torch.load('model/checkpoints/best_model.pt')
model.load_state_dict(checkpoint['model_state_dict'])

# Create generator
generator = TextGenerator(
    model=model,
    tokenizer_path='tokenizer/my_tokenizer.model'
)

# Generate answer
question = "How do I reset my password?"
answer = generator.generate(
    prompt=question,
    max_length=100,
    temperature=0.7,
    top_k=50,
    top_p=0.9
)

print(f"Q: {question}")
print(f"A: {answer}")

questions = [
    "How do I reset my password?",
    "What are your operating hours?",
    "How do I contact support?"
]

for q in questions:
    answer = generator.generate(q, max_length=80, temperature=0.6)
    print(f"Q: {q}")
    print(f"A: {answer}\\n")
"""

MANUAL_CUSTOM_MODEL = """
from gptmed.model.configs.model_config import ModelConfig

# Create custom model config
custom_config = ModelConfig(
    vocab_size=8000,      # Match your tokenizer
    d_model=512,          # Hidden dimension
    n_layers=8,           # Number of transformer layers
    n_heads=8,            # Attention heads
    d_ff=2048,            # Feed-forward dimension
    max_seq_len=512,      # Max sequence length
    dropout=0.1,          # Dropout rate
    use_rope=True         # Use RoPE positional encoding
)
"""

# The manual's "Custom Training Configuration", with three changes a CPU test needs, stated here:
# device='cuda' -> 'cpu' (no GPU in CI), max_steps=2 added (15 epochs of `small` take hours on a
# CPU), and `main()` -> `main(train_config)` (the manual forgets to pass the config it built).
MANUAL_TRAINING = """
from gptmed.training.train import main
from gptmed.configs.train_config import TrainingConfig
from gptmed.model.configs.model_config import get_small_config

# Custom training config
train_config = TrainingConfig(
    batch_size=32,
    learning_rate=3e-4,
    num_epochs=15,
    warmup_steps=500,
    grad_clip=1.0,
    weight_decay=0.01,
    save_every=1,  # Save checkpoint every epoch
    eval_every=100,  # Evaluate every 100 steps
    train_data_path='data/tokenized/train.npy',
    val_data_path='data/tokenized/val.npy',
    checkpoint_dir='model/checkpoints',
    device='cpu',
    seed=42,
    max_steps=2,
)

# Train
main(train_config)
"""


def _python(code: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    script = cwd / "snippet.py"
    script.write_text(textwrap.dedent(code), encoding="utf-8")
    result = subprocess.run(
        [sys.executable, str(script)], cwd=cwd, capture_output=True, text=True, timeout=600
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    cwd = tmp_path_factory.mktemp("manual_api")
    run(["gptmed-data", "synth", "--out", "data/my_qa_data.txt", "--facts", "8000", "--seed", "0"], cwd)
    run(["python", "-m", "gptmed.tokenizer.train_tokenizer", "--input", "data/my_qa_data.txt",
         "--output-prefix", "tokenizer/my_tokenizer", "--vocab-size", "8000"], cwd)  # fmt: skip
    run(["python", "-m", "gptmed.tokenizer.tokenize_data", "--input", "data/my_qa_data.txt",
         "--tokenizer", "tokenizer/my_tokenizer.model", "--output-dir", "data/tokenized"], cwd)  # fmt: skip
    return cwd


def test_custom_training_config_trains_with_main(workdir: Path) -> None:
    out = _python(MANUAL_TRAINING, workdir).stdout
    assert "Training complete" in out
    assert (workdir / "model/checkpoints/best_model.pt").exists()


def test_generation_api_as_written(workdir: Path) -> None:
    if not (workdir / "model/checkpoints/best_model.pt").exists():
        _python(MANUAL_TRAINING, workdir)
    out = _python(MANUAL_5_2_AND_5_4, workdir).stdout
    assert out.count("Q: ") == 4 and out.count("A: ") == 4
    assert "Q: How do I contact support?" in out


def test_custom_model_config_as_written(tmp_path: Path) -> None:
    _python(MANUAL_CUSTOM_MODEL + "\nassert custom_config.d_model == 512\n", tmp_path)
