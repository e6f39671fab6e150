"""The exporter: dynamic shapes, parity (prefill + cached decode), the gates, atomic output."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from click.testing import CliRunner
from gptmed.inference import TextGenerator
from gptmed.inference.backends import OnnxBackend
from gptmed.inference.cli import main as infer_cli


@pytest.mark.parametrize(("batch", "prompt", "steps"), [(1, 1, 3), (3, 7, 5), (2, 20, 12)])
def test_dynamic_batch_sequence_and_past_match_torch(onnx_gen, torch_gen, batch, prompt, steps) -> None:  # type: ignore[no-untyped-def]
    rng = np.random.default_rng(batch * 100 + prompt)
    ids = rng.integers(4, onnx_gen.config.vocab_size, size=(batch, prompt))
    mask = np.ones_like(ids)
    if batch > 1:
        mask[0, : prompt // 2] = 0  # left padding on one row
    lo, so = onnx_gen.backend.prefill(ids, mask)
    lt, st = torch_gen.backend.prefill(ids, mask)
    assert np.abs(lo - lt).max() <= 1e-4
    # the graph computed logits only for the positions that hold some row's last token
    assert so.logits.shape[1] == prompt - int(mask.sum(axis=1).min()) + 1
    for _ in range(steps):  # past length grows 0 -> prompt -> prompt + steps
        tok = rng.integers(4, onnx_gen.config.vocab_size, size=batch)
        lo, lt = onnx_gen.backend.decode(so, tok), torch_gen.backend.decode(st, tok)
        assert np.abs(lo - lt).max() <= 1e-4
    full_o = onnx_gen.backend.forward(ids, mask)
    full_t = torch_gen.backend.forward(ids, mask)
    assert np.abs(full_o - full_t)[mask.astype(bool)].max() <= 1e-4


def test_int8_gate_recorded_with_threshold(artifacts) -> None:  # type: ignore[no-untyped-def]
    extra = json.loads((artifacts.bundle / "gptmed.json").read_text())["extra"]
    q = extra["int8"]
    assert q["min_agreement"] == 0.9 and q["near_tie_logits"] == 0.5
    assert q["greedy_agreement"] <= q["agreement"]  # exact matches are near-ties too
    assert q["positions"] == 6 * 24  # the parity prompts' greedy tokens
    # 6 prompts x (greedy + 3 samples), each prompt + continuation filling the fixture's 96-token context
    assert q["calibration_tokens"] == 6 * 4 * 96
    assert q["int8_bytes"] < q["fp32_bytes"]
    assert q["fp32_ms_per_token"] > 0 and q["int8_ms_per_token"] > 0
    assert extra["variants"] == {"fp32": "model.onnx", "int8": "model.int8.onnx"}


def test_the_int8_graph_quantizes_every_matmul_with_scales_fixed_at_export(artifacts) -> None:  # type: ignore[no-untyped-def]
    import onnx

    def ops(name: str) -> list[str]:
        return [n.op_type for n in onnx.load(str(artifacts.bundle / name)).graph.node]

    fp32, int8 = ops("model.onnx"), ops("model.int8.onnx")
    matmuls = fp32.count("MatMul") + fp32.count("Gemm")
    assert matmuls > 0 and int8.count("MatMulIntegerToFloat") == matmuls
    assert "MatMul" not in int8 and "Gemm" not in int8
    assert "DynamicQuantizeLinear" not in int8  # no scale taken from the batch at run time
    # each MatMul's bias Add is folded into its MatMulIntegerToFloat (the qkv, attention-output
    # and MLP-output projections of every block; the MLP's first bias goes to BiasGelu)
    assert int8.count("Add") == fp32.count("Add") - 3 * fp32.count("GroupQueryAttention")
    # one QuantizeLinear per distinct activation (the fixture's Q/K/V are one MatMul)
    assert 0 < int8.count("QuantizeLinear") <= matmuls


def test_the_int8_gate_refuses_a_graph_whose_activations_clip(artifacts, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """The gate's measure can fail: the same graph calibrated on ranges 20x too narrow clips
    most activations, and its agreement with fp32 drops below the gate's bar."""
    from gptmed.inference.bundle import Bundle, load_bundle
    from gptmed.inference.export import int8
    from gptmed.inference.export.parity import PARITY_PROMPTS, prompt_set

    bundle = load_bundle(artifacts.bundle)
    fp32 = OnnxBackend(bundle)
    prompts = prompt_set(TextGenerator.from_bundle(artifacts.bundle).tokenizer, fp32.config, PARITY_PROMPTS)
    ranges = int8.activation_ranges(bundle.model_path, prompts, fp32.config)
    narrow = {name: (lo / 20, hi / 20) for name, (lo, hi) in ranges.items()}
    int8.write_int8_graph(bundle.model_path, tmp_path / "clipped.onnx", narrow)
    clipped = Bundle(
        bundle.root,
        bundle.manifest,
        "clipped.onnx",
        (tmp_path / "clipped.onnx").read_bytes(),
        bundle.tokenizer_path,
    )
    got = int8.int8_agreement(fp32, OnnxBackend(clipped), prompts)
    assert got["agreement"] < int8.INT8_MIN_AGREEMENT, got
    assert int8.int8_agreement(fp32, fp32, prompts)["greedy_agreement"] == 1.0


def test_failed_parity_gate_leaves_no_bundle(artifacts, tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    from gptmed.inference import export
    from gptmed.inference.export import writer

    real = export.check_parity
    monkeypatch.setattr(
        writer, "check_parity", lambda t, o, p: real(t, o, p, atol=-1.0)
    )  # impossible tolerance
    out = tmp_path / "bundle"
    with pytest.raises(export.ParityError, match="parity gate failed"):
        export.export_bundle(artifacts.checkpoint, out)
    assert not out.exists()
    assert list(tmp_path.iterdir()) == []  # no temp folder left behind


def test_an_interrupted_export_leaves_no_staging_folder(artifacts, tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    from gptmed.inference import export
    from gptmed.inference.export import writer

    def interrupted(*_args: object) -> None:
        raise KeyboardInterrupt  # also SystemExit: gptmed-core's cli_errors turns SIGTERM into one

    monkeypatch.setattr(writer, "check_parity", interrupted)
    with pytest.raises(KeyboardInterrupt):
        export.export_bundle(artifacts.checkpoint, tmp_path / "ex6")
    assert list(tmp_path.iterdir()) == []


def test_an_interrupted_replace_puts_the_previous_bundle_back(artifacts, tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    import os

    from gptmed.inference import export

    out = tmp_path / "bundle"
    shutil.copytree(artifacts.bundle, out)
    before = (out / "gptmed.json").read_bytes()
    real = os.replace

    def replace(src: Any, dst: Any) -> None:
        if Path(dst) == out and Path(src).name.startswith(".bundle.tmp-"):
            raise KeyboardInterrupt  # the old bundle was moved aside; the new one is not in place yet
        real(src, dst)

    monkeypatch.setattr(os, "replace", replace)
    with pytest.raises(KeyboardInterrupt):
        export.export_bundle(artifacts.checkpoint, out)
    monkeypatch.undo()
    # was: no bundle at OUT, the previous one hidden in .bundle.old-PID
    assert (out / "gptmed.json").read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["bundle"]


def test_a_successful_export_removes_stale_staging_folders_of_its_name(artifacts, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    import os

    from gptmed.inference import export

    stale = [tmp_path / ".ex6.tmp-3oigbqdr", tmp_path / ".ex6.tmp-999999999-abcd1234"]  # old name, dead PID
    running = tmp_path / f".ex6.tmp-{os.getpid()}-live1234"  # an export still running (a live PID)
    others = [tmp_path / ".ex7.tmp-3oigbqdr", tmp_path / "ex6.tmp-x"]  # another output; not a staging name
    for folder in [*stale, running, *others]:
        folder.mkdir()
        (folder / "model.onnx").write_bytes(b"\0" * 1000)
    (tmp_path / ".ex6.tmp-file").write_text("not a folder")
    export.export_bundle(artifacts.checkpoint, tmp_path / "ex6")
    # was: every killed export's 4.4 MB staging folder stayed forever
    assert not any(p.exists() for p in stale)
    assert running.is_dir() and all(p.is_dir() for p in others)
    assert (tmp_path / ".ex6.tmp-file").is_file() and (tmp_path / "ex6" / "gptmed.json").is_file()


def test_sigterm_during_export_leaves_no_staging_folder(artifacts, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    import os
    import signal
    import subprocess
    import sys
    import time

    code = "import sys; from gptmed.inference.cli import main; sys.argv[0] = 'gptmed-infer'; main()"
    args = ["export", "--checkpoint", str(artifacts.checkpoint), "--out", "ex6", "--quantize", "int8"]
    proc = subprocess.Popen(
        [sys.executable, "-c", code, *args],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONWARNINGS": "ignore"},
    )
    try:
        deadline = time.time() + 120
        while not any(p.name.startswith(".ex6.tmp-") for p in tmp_path.iterdir()):
            assert proc.poll() is None, proc.communicate()
            assert time.time() < deadline
            time.sleep(0.005)
        time.sleep(0.05)  # inside the export's work
        proc.send_signal(signal.SIGTERM)
        _out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    # gptmed-core's cli_errors turns SIGTERM into an exception, so the export's cleanup runs
    assert proc.returncode == 143, (proc.returncode, err)  # was -15: killed, no cleanup
    assert "Traceback" not in err
    assert list(tmp_path.iterdir()) == []  # was: .ex6.tmp-XXXX/ (4.4 MB) left behind


def test_failed_int8_gate_leaves_no_bundle(artifacts, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    from gptmed.inference import export

    out = tmp_path / "bundle"
    with pytest.raises(export.ParityError, match="int8 gate failed"):
        export.export_bundle(artifacts.checkpoint, out, quantize="int8", min_int8_agreement=1.01)
    assert list(tmp_path.iterdir()) == []


def test_reexport_replaces_a_bundle_but_never_a_foreign_folder(artifacts, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    from gptmed.core import BundleError
    from gptmed.inference import export

    out = tmp_path / "bundle"
    shutil.copytree(artifacts.bundle, out)
    export.export_bundle(artifacts.checkpoint, out)  # fp32 only now
    assert not (out / "model.int8.onnx").exists()
    assert TextGenerator.from_bundle(out).generate("What is fever?", temperature=0.0)
    foreign = tmp_path / "docs"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep me")
    with pytest.raises(BundleError, match="not a bundle"):
        export.export_bundle(artifacts.checkpoint, foreign)
    assert (foreign / "notes.txt").read_text() == "keep me"


def test_wrong_tokenizer_is_refused(artifacts, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    from gptmed.core import ManifestError, QAPair, write_qa_text
    from gptmed.inference import export
    from gptmed.tokenizer import train_tokenizer

    write_qa_text(
        tmp_path / "other.txt", [QAPair(f"Other question {i}?", f"Other answer {i}.") for i in range(30)]
    )
    train_tokenizer(tmp_path / "other.txt", tmp_path / "other", vocab_size=300)
    with pytest.raises(ManifestError, match="not the one the checkpoint was trained with"):
        export.export_bundle(artifacts.checkpoint, tmp_path / "b", tokenizer_path=tmp_path / "other.model")
    assert not (tmp_path / "b").exists()


def test_backend_threads_option(artifacts) -> None:  # type: ignore[no-untyped-def]
    from gptmed.inference.bundle import load_bundle

    be = OnnxBackend(load_bundle(artifacts.bundle), threads=1)
    ids = np.asarray([[2, 10, 11]])
    logits, _ = be.prefill(ids, np.ones_like(ids))
    assert logits.shape == (1, artifacts.config.vocab_size)


def test_onnxruntime_genai_same_greedy_tokens_from_same_ids(artifacts, onnx_gen) -> None:  # type: ignore[no-untyped-def]
    og = pytest.importorskip("onnxruntime_genai", reason="onnxruntime-genai is a dev-only test dependency")
    ids = onnx_gen.encode_prompt("What is fever?")
    ours = onnx_gen.generate_ids([ids], temperature=0.0, frequency_penalty=0.0, max_length=20)[
        0
    ]  # genai has no such penalty
    model = og.Model(str(artifacts.bundle))
    params = og.GeneratorParams(model)
    params.set_search_options(do_sample=False, max_length=len(ids) + 20)
    gen = og.Generator(model, params)
    gen.append_tokens(np.asarray([ids], dtype=np.int32))
    theirs: list[int] = []
    while not gen.is_done():
        gen.generate_next_token()
        theirs.append(int(gen.get_next_tokens()[0]))
    eos = onnx_gen.special_ids.eos
    assert theirs[: len(ours)] == ours
    assert theirs[len(ours) :] in ([], [eos])  # genai keeps the EOS, we drop it


def test_kv_cache_is_appended_in_place(onnx_gen, torch_gen) -> None:  # type: ignore[no-untyped-def]
    """past_key_values.* and present.* are one buffer: a decode step writes the new keys at each
    row's length and moves nothing (same memory, earlier entries untouched)."""
    ids = np.asarray([[0, 0, 2, 10, 11], [2, 12, 13, 14, 15]])  # row 0 left padded: 3 real tokens
    mask = (ids != 0).astype(np.int64)
    _, state = onnx_gen.backend.prefill(ids, mask, capacity=16)
    key0 = state.buffers[0]  # layer 0 keys, (B, nh, 16, hs)
    assert key0.shape[2] == 16
    before = key0.copy()
    written = before.any(axis=(1, 3))  # (B, 16): positions holding a key
    assert written[:, :5].all() and not written[:, 5:].any()  # prefill wrote 5 rows (row 0: 3 real)
    onnx_gen.backend.decode(state, np.asarray([20, 21]))
    assert state.buffers[0] is key0  # same memory
    assert np.array_equal(key0[0, :, :3], before[0, :, :3])
    assert np.array_equal(key0[1, :, :5], before[1, :, :5])
    assert not np.array_equal(key0[0, :, 3], before[0, :, 3])  # row 0's new key, at its length 3
    assert key0[1, :, 5].any() and not key0[:, :, 6:].any()  # row 1's at 5; nothing further
    assert state.lengths.tolist() == [4, 6]


def test_cache_grows_past_its_capacity_and_stays_exact(onnx_gen, torch_gen) -> None:  # type: ignore[no-untyped-def]
    ids = np.asarray([[2, 10, 11, 12]])
    lo, so = onnx_gen.backend.prefill(ids, np.ones_like(ids), capacity=5)
    lt, st = torch_gen.backend.prefill(ids, np.ones_like(ids))
    for step in range(12):  # 5 -> 10 -> 20 keys
        tok = np.asarray([4 + step])
        lo, lt = onnx_gen.backend.decode(so, tok), torch_gen.backend.decode(st, tok)
        assert np.abs(lo - lt).max() <= 1e-4
    assert so.capacity == 20


def test_decode_past_the_context_is_an_error(onnx_gen) -> None:  # type: ignore[no-untyped-def]
    ctx = onnx_gen.config.max_seq_len
    ids = np.full((1, ctx), 5)
    _, state = onnx_gen.backend.prefill(ids, np.ones_like(ids))
    with pytest.raises(ValueError, match=f"exceeds the model's context of {ctx}"):
        onnx_gen.backend.decode(state, np.asarray([5]))


def test_head_size_is_padded_to_a_multiple_of_8(artifacts) -> None:  # type: ignore[no-untyped-def]
    """GroupQueryAttention needs head sizes in multiples of 8; the fixture's 12 runs as 16."""
    import onnxruntime as ort

    assert artifacts.config.head_dim == 12
    sess = ort.InferenceSession(str(artifacts.bundle / "model.onnx"), providers=["CPUExecutionProvider"])
    assert sess.get_inputs()[4].shape[1:] == [artifacts.config.n_heads, "past_sequence", 16]
    genai = json.loads((artifacts.bundle / "genai_config.json").read_text())
    assert genai["model"]["decoder"]["head_size"] == 16


def test_the_runtime_session_keeps_the_residual_add_and_layernorm_apart(artifacts, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """The graph norms with Add + LayerNormalization, and the runtime's session does not let
    onnxruntime fuse them into SkipLayerNormalization (its slower CPU kernel); a session with
    every fusion on does, so the option is what keeps them apart."""
    import onnx
    import onnxruntime as ort
    from gptmed.inference.backends import _session_options, open_session

    graph = artifacts.bundle / "model.int8.onnx"
    assert not [n for n in onnx.load(str(graph)).graph.node if n.op_type == "SkipLayerNormalization"]

    def optimised_ops(disable: bool) -> set[str]:
        opts = _session_options(1)
        opts.optimized_model_filepath = str(tmp_path / f"optimised-{disable}.onnx")
        if disable:
            open_session(str(graph), opts)
        else:
            ort.InferenceSession(str(graph), opts, providers=["CPUExecutionProvider"])
        return {n.op_type for n in onnx.load(opts.optimized_model_filepath).graph.node}

    kept, fused = optimised_ops(disable=True), optimised_ops(disable=False)
    assert "SkipLayerNormalization" not in kept and "LayerNormalization" in kept
    assert "SkipLayerNormalization" in fused


def test_bundle_of_another_graph_layout_is_refused(artifacts, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    from gptmed.core import BundleError

    out = tmp_path / "old"
    shutil.copytree(artifacts.bundle, out)
    manifest = json.loads((out / "gptmed.json").read_text())
    assert manifest["extra"]["graph_layout"] == "gqa-shared-kv-right-padded/2"
    del manifest["extra"]["graph_layout"]  # as gptmed-infer 0.1.0's traced graphs were
    (out / "gptmed.json").write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match="graph layout is None.*re-export"):
        TextGenerator.from_bundle(out)
    info = CliRunner().invoke(infer_cli, ["info", str(out)])  # "verify a bundle" says so too
    assert info.exit_code == 1 and "graph layout is None" in info.output, info.output


def test_out_under_a_file_is_one_line_naming_the_file(artifacts, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    (tmp_path / "afile").write_text("not a folder")
    args = ["export", "--checkpoint", str(artifacts.checkpoint), "--out", str(tmp_path / "afile" / "b")]
    r = CliRunner().invoke(infer_cli, args)
    assert r.exit_code == 1
    blocker = tmp_path / "afile"
    # was: "Error: [Errno 17] File exists: '.../afile'"
    assert (
        r.output
        == f"Error: cannot create the bundle's parent folder {blocker}: {blocker} is a file; choose another path\n"
    )
    assert [p.name for p in tmp_path.iterdir()] == ["afile"]


def test_a_failed_export_removes_the_folders_it_made(artifacts, tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    from gptmed.inference import export
    from gptmed.inference.export import writer

    real = export.check_parity
    monkeypatch.setattr(writer, "check_parity", lambda t, o, p: real(t, o, p, atol=-1.0))
    with pytest.raises(export.ParityError):
        export.export_bundle(artifacts.checkpoint, tmp_path / "runs" / "today" / "bundle")
    assert list(tmp_path.iterdir()) == []  # was: runs/today/ left behind


def test_export_reports_its_stages(artifacts, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    from gptmed.inference.export import export_bundle_report, export_stages

    seen: list[tuple[int, int, str]] = []
    report = export_bundle_report(
        artifacts.checkpoint, tmp_path / "b", quantize="int8", progress=lambda *a: seen.append(a)
    )
    stages = export_stages("int8")
    assert stages == [
        "loading the checkpoint",
        "writing model.onnx",
        "parity gate",
        "int8 gate",
        "writing the bundle",
    ]
    assert seen == [(n, 5, name) for n, name in enumerate(stages)] + [(5, 5, "done")]
    assert report.int8 is not None and (tmp_path / "b" / "model.int8.onnx").is_file()
    assert len(export_stages(None)) == 4


def test_export_progress_bar_is_drawn_on_a_terminal_only(artifacts, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    import fcntl
    import os
    import pty
    import struct
    import subprocess
    import sys
    import termios

    code = "import sys; from gptmed.inference.cli import main; sys.argv[0] = 'gptmed-infer'; main()"
    args = [sys.executable, "-c", code, "export", "--checkpoint", str(artifacts.checkpoint)]
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    piped = subprocess.run([*args, "--out", "piped"], cwd=tmp_path, capture_output=True, text=True, env=env)
    assert piped.returncode == 0, piped.stderr
    assert piped.stderr == ""  # no bar in a log or a pipe
    assert piped.stdout.startswith("✓ bundle written to piped")
    primary, secondary = pty.openpty()
    fcntl.ioctl(secondary, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))  # a 100-column terminal
    try:
        proc = subprocess.run(
            [*args, "--out", "tty"],
            cwd=tmp_path,
            stdout=subprocess.PIPE,
            stderr=secondary,
            env=env,
            timeout=300,
        )
        os.close(secondary)
        drawn = b""
        while True:
            try:
                chunk = os.read(primary, 65536)
            except OSError:  # EIO: the terminal's other end is closed and drained
                break
            if not chunk:
                break
            drawn += chunk
    finally:
        os.close(primary)
    assert proc.returncode == 0
    text = drawn.decode("utf-8", "replace")
    assert "export" in text and "parity gate" in text and "stage" in text, text
