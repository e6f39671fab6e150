"""``gptmed-infer export``: a training checkpoint -> a verified, self-describing bundle folder.

Needs the ``[export]`` extra (torch, onnx, gptmed-model). Steps, all in a temp
folder beside ``out_dir`` that replaces it only when every gate passed:

1. load the checkpoint (``torch.load(weights_only=True)``) and the tokenizer it records
   (verified by sha256), build the ``GPTTransformer``;
2. write ``model.onnx`` node by node from the state dict (:mod:`gptmed.inference.graph`: fused
   LayerNorms, ``GroupQueryAttention`` with RoPE and an in-place KV cache) with KV-cache I/O
   (``input_ids``, ``position_ids``, ``attention_mask``, ``past_key_values.{i}.key|value`` ->
   ``logits``, ``present.{i}.key|value``), dynamic batch, sequence and past lengths, the tied
   embedding stored once (the output projection is a ``Gemm`` with ``transB=1`` on it);
3. the parity gate: onnxruntime vs torch logits on a left-padded prefill and on cached decode
   steps, max abs diff <= ``PARITY_ATOL`` (1e-4), and greedy tokens identical on a prompt set;
4. optionally ``--quantize int8`` (onnxruntime dynamic quantization) -> ``model.int8.onnx``, gated
   on greedy agreement with fp32 (``INT8_MIN_AGREEMENT``), size and speed reported;
5. ``genai_config.json`` for onnxruntime-genai, ``tokenizer.model`` and ``gptmed.json``.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import tempfile
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import numpy as np
from gptmed.core import (
    BundleError,
    BundleManifest,
    CheckpointError,
    CheckpointManifest,
    GenerationConfig,
    ManifestError,
    sha256_file,
)
from gptmed.core.io import TEMP_MARKER
from gptmed.inference.bundle import (
    BUNDLE_MANIFEST,
    GENAI_CONFIG,
    MODEL_FILE,
    MODEL_INT8_FILE,
    TOKENIZER_FILE,
    expected_io_names,
    load_bundle,
)
from gptmed.inference.graph import GRAPH_LAYOUT, OPSET, kv_head_dim

__all__ = [
    "INT8_MIN_AGREEMENT",
    "PARITY_ATOL",
    "PARITY_PROMPTS",
    "ExportReport",
    "ParityError",
    "check_parity",
    "export_bundle",
    "export_onnx",
    "genai_config",
    "graph_weights",
]

_log = logging.getLogger(__name__)

PARITY_ATOL = 1e-4  # max |onnx - torch| logit difference in fp32 (prefill and cached decode)
INT8_MIN_AGREEMENT = 0.90  # int8 greedy next token == fp32's on >= 90% of teacher-forced positions
PARITY_DECODE_STEPS = 8  # cached decode steps compared one by one
PARITY_GREEDY_TOKENS = 24  # greedy tokens compared per prompt
PARITY_PROMPTS = (
    "What is diabetes?",
    "How do I reset my password?",
    "What are the symptoms of the flu?",
    "How is high blood pressure treated?",
    "Can children take aspirin?",
    "What causes headaches?",
)

_EXPORT_HINT = 'pip install "gptmed-infer[export]"'


class ParityError(BundleError):
    """The exported graph does not reproduce the torch model; no bundle was written."""


@dataclass
class ExportReport:
    """What an export did and measured."""

    out_dir: Path
    files: dict[str, int] = field(default_factory=dict)  # file name -> bytes
    parity: dict[str, Any] = field(default_factory=dict)
    int8: dict[str, Any] | None = None
    seconds: float = 0.0


def _torch() -> Any:
    try:
        import torch
    except ImportError as exc:
        raise ImportError(f"export needs torch: {_EXPORT_HINT}") from exc
    return torch


def _versions() -> dict[str, str]:
    out: dict[str, str] = {}
    for dist in (
        "gptmed-infer",
        "gptmed-core",
        "gptmed-model",
        "gptmed-tokenizer",
        "torch",
        "onnx",
        "onnxruntime",
    ):
        try:
            out[dist] = version(dist)
        except PackageNotFoundError:
            continue
    return out


# ----------------------------------------------------------------------------------- the graph


def graph_weights(model: Any) -> dict[str, np.ndarray]:
    """What :func:`gptmed.inference.graph.build_graph` reads from a ``GPTTransformer``: its state
    dict (wrapper prefixes removed) and, with RoPE, the model's own cos/sin tables (non-persistent
    buffers, so the graph rotates exactly as the model does), all as float32 numpy arrays."""
    _torch()
    from gptmed.model.architecture import clean_state_dict

    tensors = dict(clean_state_dict(model.state_dict()))
    if model.rope_cos is not None:
        tensors["rope_cos"], tensors["rope_sin"] = model.rope_cos, model.rope_sin  # (max_seq_len, hs/2)
    return {k: v.detach().float().cpu().numpy() for k, v in tensors.items()}


def export_onnx(model: Any, path: str | os.PathLike[str]) -> tuple[list[str], list[str]]:
    """Write ``model`` (a ``GPTTransformer``) as the KV-cache decode graph of
    :mod:`gptmed.inference.graph` to ``path``; return its input and output names."""
    import onnx
    from gptmed.inference.graph import build_graph

    graph = build_graph(model.config, graph_weights(model))
    onnx.checker.check_model(graph)
    onnx.save_model(graph, str(path))
    return expected_io_names(model.config.n_layers)


# ----------------------------------------------------------------------------------- parity


def _prompt_set(tokenizer: Any, config: Any, prompts: Sequence[str]) -> list[list[int]]:
    bos = tokenizer.special_ids.bos
    ids = [[bos, *tokenizer.encode(tokenizer.template.render_prompt(p))] for p in prompts]
    limit = max(4, config.max_seq_len - PARITY_GREEDY_TOKENS - 1)
    return [p[:limit] for p in ids]


def check_parity(
    torch_backend: Any, onnx_backend: Any, prompt_ids: list[list[int]], atol: float = PARITY_ATOL
) -> dict[str, Any]:
    """Compare onnxruntime with torch; raise :class:`ParityError` on any difference past ``atol``.

    Prefill: the prompt set as one left-padded batch, every real position's logits. Decode:
    ``PARITY_DECODE_STEPS`` cached steps feeding torch's greedy tokens to both. Greedy: each
    prompt alone, ``PARITY_GREEDY_TOKENS`` tokens, must be identical.
    """
    from gptmed.inference.sampling import Sampler

    cfg = torch_backend.config
    batch, width = len(prompt_ids), max(len(p) for p in prompt_ids)
    ids = np.zeros((batch, width), dtype=np.int64)
    mask = np.zeros((batch, width), dtype=np.int64)
    for row, p in enumerate(prompt_ids):
        ids[row, width - len(p) :] = p
        mask[row, width - len(p) :] = 1
    real = mask.astype(bool)
    full_t = torch_backend.forward(ids, mask)  # (B, T, V)
    full_o = onnx_backend.forward(ids, mask)
    prefill_diff = float(np.abs(full_t - full_o)[real].max())
    lt, st = torch_backend.prefill(ids, mask)
    lo, so = onnx_backend.prefill(ids, mask)
    decode_diff = float(np.abs(lt - lo).max())
    steps = min(PARITY_DECODE_STEPS, cfg.max_seq_len - width)
    for _ in range(steps):
        tokens = np.argmax(lt, axis=-1).astype(np.int64)
        lt = torch_backend.decode(st, tokens)
        lo = onnx_backend.decode(so, tokens)
        decode_diff = max(decode_diff, float(np.abs(lt - lo).max()))
    report: dict[str, Any] = {
        "atol": atol,
        "prefill_max_abs_diff": prefill_diff,
        "decode_max_abs_diff": decode_diff,
        "decode_steps": steps,
        "prompts": batch,
    }
    if not (prefill_diff <= atol and decode_diff <= atol):
        raise ParityError(
            f"parity gate failed: ONNX logits differ from torch by {max(prefill_diff, decode_diff):.3g} "
            f"(prefill {prefill_diff:.3g}, cached decode {decode_diff:.3g}; allowed {atol:g})",
            hint="no bundle was written; report this with the checkpoint's model config",
        )
    greedy = GenerationConfig(temperature=0.0, max_length=PARITY_GREEDY_TOKENS)
    mismatched = []
    for n, p in enumerate(prompt_ids):
        max_new = min(PARITY_GREEDY_TOKENS, cfg.max_seq_len - len(p))
        a = _greedy(torch_backend, p, max_new, greedy, Sampler)
        b = _greedy(onnx_backend, p, max_new, greedy, Sampler)
        if a != b:
            mismatched.append(n)
    report["greedy_prompts_identical"] = batch - len(mismatched)
    if mismatched:
        raise ParityError(
            f"parity gate failed: greedy tokens differ between ONNX and torch on prompts {mismatched}",
            hint="no bundle was written; report this with the checkpoint's model config",
        )
    return report


def _greedy(
    backend: Any, prompt: list[int], max_new: int, cfg: GenerationConfig, sampler_cls: Any
) -> list[int]:
    ids = np.asarray([prompt], dtype=np.int64)
    logits, state = backend.prefill(ids, np.ones_like(ids))
    sampler = sampler_cls(cfg, 1, backend.config.vocab_size)
    out: list[int] = []
    for step in range(max_new):
        tok = sampler.next_tokens(logits)
        out.append(int(tok[0]))
        if step < max_new - 1:
            logits = backend.decode(state, tok)
    return out


# ----------------------------------------------------------------------------------- int8


def _decode_speed(backend: Any, prompt: list[int], tokens: int = 32) -> float:
    """ms per decode step (batch 1, greedy) after one warm-up."""
    cfg = GenerationConfig(temperature=0.0, max_length=tokens)
    from gptmed.inference.sampling import Sampler

    tokens = min(tokens, backend.config.max_seq_len - len(prompt))
    _greedy(backend, prompt, 2, cfg, Sampler)
    start = time.perf_counter()
    _greedy(backend, prompt, tokens, cfg, Sampler)
    return (time.perf_counter() - start) * 1000.0 / max(tokens, 1)


def quantize_int8(
    fp32_path: Path,
    int8_path: Path,
    fp32_backend: Any,
    make_backend: Any,
    prompt_ids: list[list[int]],
    min_agreement: float = INT8_MIN_AGREEMENT,
) -> dict[str, Any]:
    """Dynamic int8 quantization of the MatMul/Gemm weights, gated on greedy agreement with fp32."""
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    # onnxruntime's quantizer logs "Please consider to run pre-processing before quantization"
    # through the root logger: advice for its own users, noise in ours (the gate below measures).
    with warnings.catch_warnings(), contextlib.redirect_stdout(None), _root_logger_at(logging.ERROR):
        warnings.simplefilter("ignore")
        quantize_dynamic(
            str(fp32_path),
            str(int8_path),
            weight_type=QuantType.QInt8,
            per_channel=True,
            op_types_to_quantize=["MatMul", "Gemm"],
            # the contrib ops' outputs have no inferred type; they are all float32
            extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT},
        )
    int8_backend = make_backend(int8_path)
    greedy = GenerationConfig(temperature=0.0, max_length=PARITY_GREEDY_TOKENS)
    from gptmed.inference.sampling import Sampler

    agree = total = 0
    for p in prompt_ids:
        max_new = min(PARITY_GREEDY_TOKENS, fp32_backend.config.max_seq_len - len(p))
        seq = _greedy(fp32_backend, p, max_new, greedy, Sampler)
        full = np.asarray([p + seq[:-1]], dtype=np.int64)  # teacher forcing with fp32's tokens
        logits = int8_backend.forward(full, np.ones_like(full))[0, len(p) - 1 :]  # (max_new, V)
        agree += int((np.argmax(logits, axis=-1) == np.asarray(seq)).sum())
        total += len(seq)
    agreement = agree / max(total, 1)
    report = {
        "min_agreement": min_agreement,
        "greedy_agreement": round(agreement, 4),
        "positions": total,
        "fp32_bytes": fp32_path.stat().st_size,
        "int8_bytes": int8_path.stat().st_size,
        "fp32_ms_per_token": round(_decode_speed(fp32_backend, prompt_ids[0]), 3),
        "int8_ms_per_token": round(_decode_speed(int8_backend, prompt_ids[0]), 3),
    }
    if agreement < min_agreement:
        raise ParityError(
            f"int8 gate failed: greedy agreement with fp32 is {agreement:.1%} < {min_agreement:.0%} "
            f"over {total} teacher-forced positions",
            hint="export without --quantize (the fp32 bundle is exact), or train longer",
        )
    return report


# ----------------------------------------------------------------------------------- genai


def genai_config(
    config: Any, special_ids: Any, generation: GenerationConfig, model_file: str = MODEL_FILE
) -> dict[str, Any]:
    """``genai_config.json`` so that onnxruntime-genai loads the bundle's graph (decoder type gpt2-like)."""
    return {
        "model": {
            "bos_token_id": special_ids.bos,
            "eos_token_id": special_ids.eos,
            "pad_token_id": special_ids.pad,
            "context_length": config.max_seq_len,
            "vocab_size": config.vocab_size,
            "type": "llama",  # a plain decoder with position_ids; "gpt2" ignores position_ids
            "decoder": {
                "session_options": {"log_id": "gptmed", "provider_options": []},
                "filename": model_file,
                "head_size": kv_head_dim(config),  # the cache's (padded) head size
                "hidden_size": config.d_model,
                "num_attention_heads": config.n_heads,
                "num_key_value_heads": config.n_heads,
                "num_hidden_layers": config.n_layers,
                "inputs": {
                    "input_ids": "input_ids",
                    "attention_mask": "attention_mask",
                    "position_ids": "position_ids",
                    "past_key_names": "past_key_values.%d.key",
                    "past_value_names": "past_key_values.%d.value",
                },
                "outputs": {
                    "logits": "logits",
                    "present_key_names": "present.%d.key",
                    "present_value_names": "present.%d.value",
                },
            },
        },
        "search": {
            "do_sample": generation.temperature > 0,
            "early_stopping": True,
            "length_penalty": 1.0,
            "max_length": config.max_seq_len,
            "min_length": 0,
            "no_repeat_ngram_size": 0,
            "num_beams": 1,
            "num_return_sequences": 1,
            "past_present_share_buffer": True,  # GroupQueryAttention appends in place
            "repetition_penalty": generation.repetition_penalty,
            "temperature": generation.temperature if generation.temperature > 0 else 1.0,
            "top_k": generation.top_k,
            "top_p": generation.top_p,
        },
    }


# ----------------------------------------------------------------------------------- bundle


def _resolve_tokenizer(
    tokenizer_path: str | os.PathLike[str] | None, manifest: CheckpointManifest | None, checkpoint: Path
) -> Path:
    from gptmed.inference.generator import recorded_tokenizer

    if tokenizer_path is None:
        recorded = manifest.extra.get("tokenizer_path") if manifest else None
        if not recorded:
            raise ManifestError(
                "the checkpoint records no tokenizer",
                where=str(checkpoint),
                hint="pass --tokenizer PATH.model (the tokenizer the model was trained with)",
            )
        return recorded_tokenizer(recorded, manifest.tokenizer_sha256 if manifest else "", str(checkpoint))
    return Path(tokenizer_path)


@contextlib.contextmanager
def _root_logger_at(level: int) -> Any:
    root = logging.getLogger()
    before = root.level
    root.setLevel(level)
    try:
        yield
    finally:
        root.setLevel(before)


def _staging_prefix(out: Path) -> str:
    return f".{out.name}{TEMP_MARKER}"  # the name gptmed-core gives temp files


def _remove_stale_staging(out: Path) -> list[Path]:
    """Remove ``.OUT.tmp-*`` staging folders beside ``out`` that a killed export left behind.

    A staging folder is named ``.OUT.tmp-PID-XXXX``; one whose process still runs (another export
    to the same folder) is kept, and so is anything that is not a folder. Names without a PID
    (older versions) are stale by definition. Returns the folders removed."""
    prefix = _staging_prefix(out)
    removed: list[Path] = []
    try:
        entries = list(out.parent.iterdir())
    except OSError:
        return removed
    for entry in entries:
        if not entry.name.startswith(prefix) or entry.is_symlink() or not entry.is_dir():
            continue
        pid = entry.name[len(prefix) :].split("-", 1)[0]
        if pid.isdigit() and _alive(int(pid)):
            continue
        shutil.rmtree(entry, ignore_errors=True)
        removed.append(entry)
    if removed:
        _log.info("removed %d staging folder(s) of killed exports: %s", len(removed), removed)
    return removed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # PermissionError: it exists, as another user's process
        return True
    return True


def _not_a_checkpoint(ckpt: Path) -> None:
    """Refuse a bundle folder (or any folder, or an .onnx file) given as the checkpoint to export."""
    if not (ckpt.is_dir() or ckpt.suffix == ".onnx"):
        return
    root = ckpt if ckpt.is_dir() else ckpt.parent
    if (root / BUNDLE_MANIFEST).is_file():
        source = None
        with contextlib.suppress(Exception):
            source = BundleManifest.load(root / BUNDLE_MANIFEST).extra.get("checkpoint")
        if source and not Path(source).is_file():
            source = None
        raise CheckpointError(
            f"export needs a training checkpoint (.pt file); {root} is already an exported bundle",
            hint=f"pass --checkpoint {source} (the checkpoint it was exported from)"
            if source
            else "pass --checkpoint with the .pt file it was exported from",
        )
    if ckpt.is_dir():
        raise CheckpointError(
            f"export needs a training checkpoint (.pt file); {ckpt} is a folder",
            hint="pass --checkpoint with a .pt file, such as model/checkpoints/best_model.pt",
        )


def _replace_dir(tmp: Path, out: Path) -> None:
    if out.exists():
        if not out.is_dir():
            raise BundleError(
                "output exists and is not a folder", where=str(out), hint="choose another --out"
            )
        entries = list(out.iterdir())
        if entries and not (out / BUNDLE_MANIFEST).is_file():
            raise BundleError(
                "output folder is not empty and is not a bundle; refusing to replace it",
                where=str(out),
                hint="choose an empty or new --out folder",
            )
        old = out.with_name(f".{out.name}.old-{os.getpid()}")
        os.replace(out, old)
        try:
            os.replace(tmp, out)
        except BaseException:
            if not out.exists():
                os.replace(old, out)  # put the previous bundle back
            raise
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, out)


def export_bundle(
    checkpoint_path: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    tokenizer_path: str | os.PathLike[str] | None = None,
    quantize: str | None = None,
    *,
    parity_prompts: Sequence[str] = PARITY_PROMPTS,
    min_int8_agreement: float = INT8_MIN_AGREEMENT,
    generation: GenerationConfig | None = None,
) -> Path:
    """Export the checkpoint at ``checkpoint_path`` to the bundle folder ``out_dir``; return it.

    See :func:`export_bundle_report` for the measurements.
    """
    return export_bundle_report(
        checkpoint_path,
        out_dir,
        tokenizer_path,
        quantize,
        parity_prompts=parity_prompts,
        min_int8_agreement=min_int8_agreement,
        generation=generation,
    ).out_dir


def export_bundle_report(
    checkpoint_path: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    tokenizer_path: str | os.PathLike[str] | None = None,
    quantize: str | None = None,
    *,
    parity_prompts: Sequence[str] = PARITY_PROMPTS,
    min_int8_agreement: float = INT8_MIN_AGREEMENT,
    generation: GenerationConfig | None = None,
) -> ExportReport:
    """:func:`export_bundle` returning an :class:`ExportReport` (sizes, parity figures, int8 figures)."""
    start = time.perf_counter()
    if quantize not in (None, "int8"):
        raise ValueError(f"quantize must be None or 'int8', got {quantize!r}")
    from gptmed.inference.backends import OnnxBackend
    from gptmed.inference.bundle import Bundle
    from gptmed.inference.generator import load_tokenizer
    from gptmed.inference.torch_backend import TorchBackend, load_checkpoint_model

    ckpt = Path(checkpoint_path)
    out = Path(out_dir)
    _not_a_checkpoint(ckpt)
    model, ckpt_manifest = load_checkpoint_model(ckpt)
    cfg = model.config
    tok_path = _resolve_tokenizer(tokenizer_path, ckpt_manifest, ckpt)
    template = ckpt_manifest.template if ckpt_manifest else None
    tokenizer = load_tokenizer(tok_path, template) if template else load_tokenizer(tok_path)
    if (
        ckpt_manifest
        and ckpt_manifest.tokenizer_sha256
        and ckpt_manifest.tokenizer_sha256 != tokenizer.sha256
    ):
        raise ManifestError(
            f"tokenizer {tok_path} (sha256 {tokenizer.sha256[:12]}...) is not the one the checkpoint was trained "
            f"with (sha256 {ckpt_manifest.tokenizer_sha256[:12]}...)",
            where=str(tok_path),
            hint="pass the tokenizer recorded in the checkpoint (or omit --tokenizer)",
        )
    if tokenizer.vocab_size != cfg.vocab_size:
        raise ManifestError(
            f"tokenizer has {tokenizer.vocab_size} ids, the model {cfg.vocab_size}",
            where=str(tok_path),
            hint="use the tokenizer the model was trained with",
        )
    special_ids = ckpt_manifest.special_ids if ckpt_manifest else tokenizer.special_ids
    gen = generation or GenerationConfig()
    out.parent.mkdir(parents=True, exist_ok=True)
    report = ExportReport(out_dir=out)
    # the PID in the name tells a later export whether this one is still running (stale: removed)
    tmp = Path(tempfile.mkdtemp(prefix=f"{_staging_prefix(out)}{os.getpid()}-", dir=out.parent))
    try:  # any exception, KeyboardInterrupt and SystemExit (SIGTERM via cli_errors) too: no staging left
        os.chmod(tmp, 0o755)
        inputs, outputs = export_onnx(model, tmp / MODEL_FILE)
        shutil.copyfile(tok_path, tmp / TOKENIZER_FILE)
        files = {MODEL_FILE: sha256_file(tmp / MODEL_FILE), TOKENIZER_FILE: tokenizer.sha256}
        draft = BundleManifest(
            model_config=cfg,
            files=dict(files),
            inputs=inputs,
            outputs=outputs,
            special_ids=special_ids,
            template=tokenizer.template,
            generation=gen,
            tokenizer_sha256=tokenizer.sha256,
            extra={"graph_layout": GRAPH_LAYOUT},
        )
        draft.save(tmp / BUNDLE_MANIFEST)

        def onnx_backend(path: Path) -> OnnxBackend:
            return OnnxBackend(Bundle(tmp, draft, path.name, path.read_bytes(), tmp / TOKENIZER_FILE))

        fp32 = onnx_backend(tmp / MODEL_FILE)
        torch_be = TorchBackend(model)
        prompts = _prompt_set(tokenizer, cfg, parity_prompts)
        report.parity = check_parity(torch_be, fp32, prompts)
        _log.info("parity gate passed: %s", report.parity)
        extra: dict[str, Any] = {
            "parity": report.parity,
            "checkpoint": str(ckpt.resolve()),
            "checkpoint_sha256": sha256_file(ckpt),
            "variants": {"fp32": MODEL_FILE},
            "graph_layout": GRAPH_LAYOUT,
        }
        if ckpt_manifest is not None:
            extra["step"] = ckpt_manifest.step
            extra["val_loss"] = ckpt_manifest.extra.get("val_loss")
        if quantize == "int8":
            report.int8 = quantize_int8(
                tmp / MODEL_FILE, tmp / MODEL_INT8_FILE, fp32, onnx_backend, prompts, min_int8_agreement
            )
            files[MODEL_INT8_FILE] = sha256_file(tmp / MODEL_INT8_FILE)
            extra["int8"] = report.int8
            extra["variants"]["int8"] = MODEL_INT8_FILE
        (tmp / GENAI_CONFIG).write_text(
            json.dumps(genai_config(cfg, special_ids, gen), indent=2) + "\n", encoding="utf-8"
        )
        files[GENAI_CONFIG] = sha256_file(tmp / GENAI_CONFIG)
        versions = _versions()
        versions["onnx_opset"] = str(OPSET)
        manifest = BundleManifest(
            model_config=cfg,
            files=files,
            inputs=inputs,
            outputs=outputs,
            special_ids=special_ids,
            template=tokenizer.template,
            generation=gen,
            tokenizer_sha256=tokenizer.sha256,
            versions=versions,
            extra=extra,
        )
        manifest.save(tmp / BUNDLE_MANIFEST)
        load_bundle(tmp)  # the bundle verifies as the runtime will see it
        report.files = {name: (tmp / name).stat().st_size for name in [*files, BUNDLE_MANIFEST]}
        _replace_dir(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    _remove_stale_staging(out)
    report.seconds = time.perf_counter() - start
    return report
