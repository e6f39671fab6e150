"""The hand-written protobuf walk vs the protobuf package, for the two files gptmed parses itself.

    python bench/protobuf_readers.py [--workdir DIR] [--vocab 8000] [--size small]

1. A SentencePiece ``.model`` (``--vocab`` pieces, trained on MedQuAD when
   ../shared/datasets/medquad is there, else on a generated Q&A set): gptmed-tokenizer checks it is
   whole and reads its trainer/normalizer facts, by hand (``gptmed.core.protowire``) or with
   sentencepiece's generated ``sentencepiece_model_pb2`` (needs the ``protobuf`` package).
2. A bundle's ``model.onnx`` (the ``--size`` preset, random weights): the runtime refuses graphs
   whose tensors live in external files (onnxruntime would read them from the working folder), by
   hand, with protobuf's schema-less ``UnknownFieldSet`` walk, or with ``onnx`` (not a runtime
   dependency: the [export] extra).

Import: what importing the reader adds (``-X importtime`` cumulative, in a fresh interpreter that
already imported what its caller loads anyway: sentencepiece and gptmed.core; onnxruntime and
numpy), median of 5. Parse: best of 20 in this process.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
MEDQUAD = ROOT.parent / "shared" / "datasets" / "medquad" / "train.qa.txt.gz"


def import_ms(preload: str, modules: list[str], runs: int = 5) -> float:
    """Median ms that importing ``modules`` adds (``-X importtime`` cumulative) once ``preload`` ran."""
    code = f"{preload}; " + "; ".join(f"import {m}" for m in modules)
    times = []
    for _ in range(runs):
        err = subprocess.run(
            [sys.executable, "-X", "importtime", "-c", code], capture_output=True, text=True
        ).stderr
        cumulative: dict[str, int] = {}  # first row per module: a later one is the import statement's
        for line in err.splitlines():
            if line.startswith("import time:") and "cumulative" not in line:
                _, total, name = line.split("|")
                cumulative.setdefault(name.strip(), int(total))
        times.append(sum(cumulative[m] for m in modules) / 1000)
    return statistics.median(times)


def parse_ms(fn: Callable[[], Any], runs: int = 20) -> float:
    best = float("inf")
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best * 1000


def tokenizer_model(workdir: Path, vocab: int, data: Path) -> Path:
    import random

    from gptmed.core import QAPair, write_qa_text
    from gptmed.tokenizer import train_tokenizer

    model = workdir / f"tok{vocab}.model"
    if model.is_file():
        return model
    if not data.is_file():  # a generated corpus with enough distinct words for the vocabulary
        rng = random.Random(0)
        syllables = [a + b for a in "bcdfghklmnprstvz" for b in "aeiou"]
        words = ["".join(rng.choices(syllables, k=rng.randint(2, 4))) for _ in range(vocab * 4)]
        pairs = [QAPair(f"What is {w}?", " ".join(rng.choices(words, k=12)) + ".") for w in words]
        data = workdir / "qa.txt"
        write_qa_text(data, pairs, overwrite=True)
    train_tokenizer(data, workdir / f"tok{vocab}", vocab_size=vocab)
    return model


def onnx_model(workdir: Path, size: str) -> bytes:
    path = workdir / f"{size}.onnx"
    if not path.is_file():
        import torch
        from gptmed.core import get_config
        from gptmed.inference.export.graph import build_graph, graph_weights
        from gptmed.model import GPTTransformer

        torch.manual_seed(0)
        cfg = get_config(size)
        path.write_bytes(build_graph(cfg, graph_weights(GPTTransformer(cfg).eval())).SerializeToString())
    return path.read_bytes()


def sentencepiece_rows(data: bytes) -> list[tuple[str, float, float, str]]:
    from gptmed.core.protowire import WireError
    from gptmed.tokenizer._proto import parse_model
    from sentencepiece import sentencepiece_model_pb2 as pb

    def with_protobuf() -> tuple[int, bool, bool, int]:
        proto = pb.ModelProto.FromString(data)
        spec = proto.trainer_spec
        ok = proto.HasField("trainer_spec") and proto.HasField("normalizer_spec")
        return len(proto.pieces), ok, spec.byte_fallback, spec.vocab_size

    assert parse_model(data).num_pieces == with_protobuf()[0]
    assert issubclass(WireError, ValueError)
    preload = "import sentencepiece, gptmed.core"  # loaded by the tokenizer anyway
    return [
        (
            "hand (gptmed.core.protowire)",
            import_ms(preload, ["gptmed.tokenizer._proto"]),
            parse_ms(lambda: parse_model(data)),
            "none",
        ),
        (
            "sentencepiece_model_pb2",
            import_ms(preload, ["sentencepiece.sentencepiece_model_pb2"]),
            parse_ms(with_protobuf),
            "protobuf -> gptmed-tokenizer",
        ),
    ]


def onnx_rows(data: bytes) -> list[tuple[str, float, float, str]]:
    from google.protobuf import empty_pb2
    from google.protobuf.unknown_fields import UnknownFieldSet
    from gptmed.inference.bundle import find_external_data

    def fields(buf: bytes) -> Any:
        return UnknownFieldSet(empty_pb2.Empty.FromString(buf))

    def tensor_external(buf: bytes, found: set[str]) -> None:
        for f in fields(buf):
            if (f.field_number == 14 and f.data == 1) or f.field_number == 13:
                found.add("external")

    def with_unknown_fields() -> set[str]:  # initializers only; the hand walk also reads nodes
        found: set[str] = set()
        for f in fields(data):
            if f.field_number == 7:
                for g in fields(f.data):
                    if g.field_number == 5:
                        tensor_external(g.data, found)
        return found

    def with_onnx() -> set[str]:
        import onnx

        model = onnx.load_model_from_string(data)
        return {t.name for t in model.graph.initializer if t.data_location == onnx.TensorProto.EXTERNAL}

    assert find_external_data(data) == with_unknown_fields() == with_onnx() == set()
    preload = "import numpy, onnxruntime, gptmed.core"  # loaded by the runtime anyway
    return [
        (
            "hand (gptmed.core.protowire)",
            import_ms(preload, ["gptmed.core.protowire"]),
            parse_ms(lambda: find_external_data(data)),
            "none",
        ),
        (
            "protobuf UnknownFieldSet",
            import_ms(preload, ["google.protobuf.unknown_fields", "google.protobuf.empty_pb2"]),
            parse_ms(with_unknown_fields),
            "protobuf (onnxruntime has it)",
        ),
        ("onnx.load_model_from_string", import_ms(preload, ["onnx"]), parse_ms(with_onnx), "onnx -> runtime"),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()) / "gptmed-bench-protobuf")
    parser.add_argument("--vocab", type=int, default=8000)
    parser.add_argument("--size", default="small")
    parser.add_argument("--data", type=Path, default=MEDQUAD, help="Q&A text to train the tokenizer on.")
    args = parser.parse_args()
    args.workdir.mkdir(parents=True, exist_ok=True)
    sp = tokenizer_model(args.workdir, args.vocab, args.data).read_bytes()
    graph = onnx_model(args.workdir, args.size)
    print(f"{'file':<40}{'reader':<32}{'import ms':>10}{'parse ms':>10}  adds")
    for label, rows in (
        (f"tokenizer .model ({args.vocab} pieces, {len(sp) / 1e3:.0f} kB)", sentencepiece_rows(sp)),
        (f"model.onnx ({args.size}, {len(graph) / 1e6:.1f} MB)", onnx_rows(graph)),
    ):
        for reader, imp, parse, adds in rows:
            print(f"{label:<40}{reader:<32}{imp:>10.1f}{parse:>10.2f}  {adds}")
            label = ""


if __name__ == "__main__":
    main()
