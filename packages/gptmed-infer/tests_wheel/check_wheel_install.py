"""Check an installed gptmed-infer wheel in an environment WITHOUT torch (`wheels` nox session).

    python packages/gptmed-infer/tests_wheel/check_wheel_install.py BUNDLE_DIR [QUESTION] [EXPECTED]

Asserts torch (and onnx) cannot be imported, that gptmed.inference comes from site-packages
(not the source tree), loads the bundle (sha256-verified) and answers QUESTION greedily; with
EXPECTED the answer must equal it. Also runs the gptmed-generate console script, and checks that
the torch side (gptmed.inference.export) is in the wheel and that `gptmed-infer export` says in
one line that it needs the [export] extra. Exit 0 = pass.
"""

from __future__ import annotations

import importlib.util
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path


def check_server_files() -> None:
    """The chat page ships inside the wheel, and the [serve] extra brings no torch."""
    from importlib.metadata import files, requires

    shipped = {str(f).replace("\\", "/") for f in files("gptmed-infer") or ()}
    for name in ("index.html", "chat.js", "chat.css"):
        assert f"gptmed/inference/server/static/{name}" in shipped, f"the wheel lacks the chat page's {name}"
    serve = [r for r in requires("gptmed-infer") or () if "extra == " in r and "serve" in r.split(";")[1]]
    assert serve and not any(r.startswith(("torch", "onnx ", "onnx>", "gptmed-model")) for r in serve), serve


def main() -> None:
    if len(sys.argv) < 2:
        sys.exit("usage: check_wheel_install.py BUNDLE_DIR [QUESTION] [EXPECTED]")
    bundle = sys.argv[1]
    question = sys.argv[2] if len(sys.argv) > 2 else "What is fever?"
    expected = sys.argv[3] if len(sys.argv) > 3 else None
    for heavy in ("torch", "onnx"):
        assert importlib.util.find_spec(heavy) is None, (
            f"{heavy} is importable: the environment must not have it"
        )
    import gptmed.inference as gi
    from gptmed.inference import TextGenerator

    assert "site-packages" in (gi.__file__ or ""), f"gptmed.inference comes from {gi.__file__}, not the wheel"
    gen = TextGenerator.from_bundle(bundle)
    answer = gen.generate(question, temperature=0.0, max_length=40)
    print(f"Q: {question}\nA: {answer}")
    assert answer, "empty answer"
    if expected is not None:
        assert answer == expected, f"expected {expected!r}, got {answer!r}"
    assert "torch" not in sys.modules
    beside = Path(sys.executable).parent / "gptmed-generate"
    script = str(beside) if beside.exists() else shutil.which("gptmed-generate")
    assert script, "the gptmed-generate console script is not installed"
    out = subprocess.run(
        [script, "--checkpoint", bundle, "--prompt", question, "--temperature", "0", "--max-length", "40"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    assert out == answer, (out, answer)
    check_export_needs_the_extra(Path(script).with_name("gptmed-infer"))
    check_server_files()
    print("wheel check passed: torch-free install answers from the bundle")


def check_export_needs_the_extra(infer: Path) -> None:
    """The torch side ships in the wheel, imports without torch, and export fails in one line."""
    import gptmed.inference.export as ex

    assert "site-packages" in (ex.__file__ or ""), ex.__file__
    assert "torch" not in sys.modules and "onnx" not in sys.modules
    with tempfile.TemporaryDirectory() as tmp:
        ckpt = Path(tmp) / "model.pt"
        ckpt.write_bytes(b"not read: torch is missing first")
        r = subprocess.run(
            [str(infer), "export", "--checkpoint", str(ckpt), "--out", str(Path(tmp) / "runs" / "bundle")],
            capture_output=True,
            text=True,
        )
        assert r.returncode == 1, (r.returncode, r.stderr)
        lines = r.stderr.strip().splitlines()
        assert len(lines) == 1 and "needs the [export] extra" in lines[0], r.stderr
        assert sorted(p.name for p in Path(tmp).iterdir()) == ["model.pt"]  # nothing left behind


if __name__ == "__main__":
    main()
