"""The runtime never imports torch or onnx (docs/architecture.md); the torch side lives in
``gptmed.inference.export`` and is reached only lazily."""

from __future__ import annotations

import json
import pkgutil
import subprocess
import sys
import textwrap

import gptmed.inference

TORCH_SIDE = "export"  # gptmed.inference.export: the [export] extra
RUNTIME_MODULES = ["gptmed.inference"] + [
    f"gptmed.inference.{m.name}"
    for m in pkgutil.iter_modules(gptmed.inference.__path__)
    if m.name != TORCH_SIDE
]


def _heavy_after_import(modules: list[str]) -> list[str]:
    code = textwrap.dedent(
        f"""
        import importlib, json, sys
        for name in {modules!r}:
            importlib.import_module(name)
        heavy = ("torch", "onnx", "onnxscript", "transformers", "gptmed.model")
        print(json.dumps(sorted(m for m in heavy if m in sys.modules)))
        """
    )
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True).stdout
    heavy: list[str] = json.loads(out)
    return heavy


def test_runtime_imports_leave_torch_and_onnx_out() -> None:
    assert {"gptmed.inference.cli", "gptmed.inference.generator", "gptmed.inference.bundle"} <= set(
        RUNTIME_MODULES
    )
    assert _heavy_after_import(RUNTIME_MODULES) == []


def test_importing_the_torch_side_loads_no_torch_until_it_runs() -> None:
    """`gptmed-infer export` imports the package first to say "needs the [export] extra" cleanly."""
    assert _heavy_after_import(["gptmed.inference.export"]) == []
    assert "torch" in _heavy_after_import(["gptmed.inference.export.torch_backend"])


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
