"""The runtime never imports torch or onnx (also an import-linter contract in the root pyproject.toml)."""

from __future__ import annotations

import subprocess
import sys
import textwrap

RUNTIME_MODULES = [
    "gptmed.inference",
    "gptmed.inference.generator",
    "gptmed.inference.backends",
    "gptmed.inference.bundle",
    "gptmed.inference.sampling",
    "gptmed.inference.streaming",
    "gptmed.inference.evaluate",
    "gptmed.inference.cli",
]


def test_runtime_imports_leave_torch_and_onnx_out() -> None:
    code = textwrap.dedent(
        f"""
        import sys, importlib
        for name in {RUNTIME_MODULES!r}:
            importlib.import_module(name)
        heavy = sorted(m for m in ("torch", "onnx", "onnxscript", "transformers") if m in sys.modules)
        assert not heavy, heavy
        """
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_bundle_answers_with_torch_unimportable(artifacts) -> None:  # type: ignore[no-untyped-def]
    code = textwrap.dedent(
        f"""
        import sys
        class Block:
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] in ("torch", "onnx", "onnxscript"):
                    raise ImportError("blocked: " + name)
        sys.meta_path.insert(0, Block())
        from gptmed.inference import TextGenerator
        gen = TextGenerator.from_bundle({str(artifacts.bundle)!r})
        print(gen.generate("What is fever?", temperature=0))
        assert "torch" not in sys.modules
        """
    )
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True).stdout
    assert out.strip() == "A body temperature above 38 degrees."
