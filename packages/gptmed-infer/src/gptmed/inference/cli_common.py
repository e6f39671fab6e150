"""What ``gptmed-generate`` and ``gptmed-infer`` share: opening a bundle or checkpoint, ``--threads``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click
from gptmed.core import GptmedError

DEFAULT_CHECKPOINT = "model/checkpoints/best_model.pt"
threads_option = click.option(
    "--threads",
    type=click.IntRange(min=0),
    default=None,
    help="onnxruntime intra-op threads (0 = all cores; default: GPTMED_NUM_THREADS or all).",
)


class NeedsTorch(GptmedError):
    pass


def looks_like_bundle(folder: Path) -> bool:
    """A folder whose ``gptmed.json`` loads as a bundle manifest (no checksums: a suggestion only)."""
    from gptmed.core import BundleManifest

    try:
        BundleManifest.load(folder / "gptmed.json")
    except (GptmedError, OSError, ValueError):
        return False
    return True


def not_found(path: Path, option: str, *, checkpoints: bool = True, bundles: bool = True) -> GptmedError:
    """The error "PATH: checkpoint|bundle not found", its hint naming ``option`` and up to 3 candidates:
    .pt files under model/checkpoints/ and bundle folders in the working folder whose gptmed.json
    loads. Hidden names (export's ``.OUT.tmp-*`` staging folders) are never suggested."""
    noun = "checkpoint" if checkpoints else "bundle"
    if not bundles:
        hint = f"train one (gptmed-train) or pass {option} with a training checkpoint (.pt file)"
    elif not checkpoints:
        hint = f"export one (gptmed-infer export --out DIR) or pass {option} with an exported bundle folder"
    else:
        hint = f"train one (gptmed-train) or pass {option} with a .pt file or an exported bundle folder"
    ckpt_dir = Path(DEFAULT_CHECKPOINT).parent
    found: list[Path] = []
    if checkpoints:
        pts = sorted(ckpt_dir.glob("*.pt")) + sorted(ckpt_dir.glob("*/best_model.pt"))
        found += [p for p in pts if p.is_file()]
    if bundles:
        found += [m.parent for m in sorted(Path(".").glob("*/gptmed.json")) if looks_like_bundle(m.parent)]
    shown = [str(c) for c in found if not any(part.startswith(".") for part in c.parts)][:3]
    if shown:
        hint += f" (found: {', '.join(shown)})"
    return GptmedError(f"{noun} not found", where=str(path), hint=hint)


def open_generator(
    checkpoint: str,
    tokenizer: str | None,
    variant: str | None,
    threads: int | None,
    option: str = "--checkpoint",
) -> Any:
    """The generator for ``checkpoint``; ``option`` is the flag that named it (for the hint)."""
    from gptmed.inference.generator import TextGenerator

    path = Path(checkpoint)
    if not path.exists():
        raise not_found(path, option, checkpoints=option != "--bundle")
    try:
        if path.suffix == ".pt":
            return TextGenerator(model=str(path), tokenizer_path=tokenizer)
        return TextGenerator(model=str(path), tokenizer_path=tokenizer, variant=variant, threads=threads)
    except ImportError as exc:
        raise NeedsTorch(
            f"{path} is a torch checkpoint and torch is not installed ({exc})",
            hint='export a bundle (gptmed-infer export) and pass its folder, or pip install "gptmed-infer[export]"',
        ) from None
