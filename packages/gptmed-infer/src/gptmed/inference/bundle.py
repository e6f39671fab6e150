"""Loading and verifying an exported bundle (``model.onnx``, ``tokenizer.model``, ``gptmed.json``).

A bundle is trusted only after:

* ``gptmed.json`` parses as a :class:`gptmed.core.BundleManifest` this version understands;
* every file it lists is a plain name inside the bundle folder and matches its sha256 (the model
  bytes that are hashed are the bytes handed to onnxruntime, so nothing can change in between);
* the ONNX graph stores all weights inline: tensors pointing at external data are refused;
* the graph's input and output names equal the manifest's (checked when the session is built).
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from gptmed.core import BundleError, BundleManifest, ModelConfig, sha256_file
from gptmed.core.protowire import LEN, VARINT, WireError, fields

__all__ = [
    "BUNDLE_MANIFEST",
    "GENAI_CONFIG",
    "GRAPH_LAYOUT",
    "MODEL_FILE",
    "MODEL_INT8_FILE",
    "TOKENIZER_FILE",
    "Bundle",
    "expected_io_names",
    "find_external_data",
    "kv_head_dim",
    "load_bundle",
]

_log = logging.getLogger(__name__)

BUNDLE_MANIFEST = "gptmed.json"
MODEL_FILE = "model.onnx"
MODEL_INT8_FILE = "model.int8.onnx"
TOKENIZER_FILE = "tokenizer.model"
GENAI_CONFIG = "genai_config.json"
# recorded in gptmed.json (extra.graph_layout); load_bundle refuses a graph laid out otherwise
GRAPH_LAYOUT = "gqa-shared-kv-right-padded/2"  # /2: num_logits_to_keep


def expected_io_names(n_layers: int) -> tuple[list[str], list[str]]:
    """The graph's input and output names for ``n_layers`` blocks (optimum / onnxruntime-genai names).

    ``num_logits_to_keep`` (int64, shape (1,)) is Hugging Face's: logits for the last k positions
    only, 0 for all. onnxruntime-genai feeds 0 to an input of that name by itself."""
    inputs = ["input_ids", "position_ids", "attention_mask", "num_logits_to_keep"]
    outputs = ["logits"]
    for i in range(n_layers):
        inputs += [f"past_key_values.{i}.key", f"past_key_values.{i}.value"]
        outputs += [f"present.{i}.key", f"present.{i}.value"]
    return inputs, outputs


def kv_head_dim(config: ModelConfig) -> int:
    """Head size of the graph's KV cache: the model's, rounded up to a multiple of 16
    (``GroupQueryAttention`` needs multiples of 8, and of 16 when it applies RoPE; the exporter
    pads the extra dims with zeros, :mod:`gptmed.inference.export.graph`)."""
    return -(-config.head_dim // 16) * 16


@dataclass(frozen=True)
class Bundle:
    """A verified bundle: its folder, manifest, the chosen graph's bytes and the tokenizer path."""

    root: Path
    manifest: BundleManifest
    model_file: str  # file name of the chosen graph inside root
    model_bytes: bytes  # the verified graph
    tokenizer_path: Path

    @property
    def model_path(self) -> Path:
        return self.root / self.model_file


def _check_name(name: str, root: Path) -> Path:
    if not name or name != os.path.basename(name) or name in (".", "..") or "\\" in name:
        raise BundleError(
            f"manifest lists {name!r}, which is not a plain file name in the bundle",
            where=str(root / BUNDLE_MANIFEST),
            hint="re-export the bundle with gptmed-infer export",
        )
    return root / name


def _verify_file(path: Path, expected: str, manifest_path: Path) -> None:
    if not path.is_file():
        raise BundleError(
            f"{path.name} is missing",
            where=str(path.parent),
            hint="copy the whole bundle folder or re-export it",
        )
    actual = sha256_file(path)
    if actual != expected:
        raise BundleError(
            f"{path.name} does not match its sha256 in {manifest_path.name} "
            f"(expected {expected[:12]}..., got {actual[:12]}...)",
            where=str(path),
            hint="the file was modified or corrupted; re-export the bundle",
        )


def _locate(p: Path, variant: str | None) -> tuple[Path, str]:
    """(bundle folder, graph file name) for ``path`` and ``variant`` (see :func:`load_bundle`)."""
    if p.suffix == ".onnx":
        return p.parent, p.name
    if variant in ("int8", "quantized"):
        return p, MODEL_INT8_FILE
    if variant not in (None, "fp32"):
        raise BundleError(f"unknown bundle variant {variant!r}", hint="use fp32 or int8")
    return p, MODEL_FILE


def _verify_checksums(root: Path, manifest: BundleManifest, model_file: str, data: bytes) -> None:
    """The chosen graph's bytes and every other file but the other graphs match the manifest."""
    manifest_path = root / BUNDLE_MANIFEST
    digest = hashlib.sha256(data).hexdigest()
    if digest != manifest.files[model_file]:
        raise BundleError(
            f"{model_file} does not match its sha256 in {BUNDLE_MANIFEST} "
            f"(expected {manifest.files[model_file][:12]}..., got {digest[:12]}...)",
            where=str(root / model_file),
            hint="the file was modified or corrupted; re-export the bundle",
        )
    for name, expected in manifest.files.items():
        if name.endswith(".onnx"):
            continue  # graphs other than the chosen one are not loaded
        _verify_file(root / name, expected, manifest_path)
    if manifest.tokenizer_sha256 and manifest.files.get(TOKENIZER_FILE) not in (
        None,
        manifest.tokenizer_sha256,
    ):
        raise BundleError(
            f"{TOKENIZER_FILE} sha256 differs from the manifest's tokenizer_sha256",
            where=str(manifest_path),
            hint="re-export the bundle",
        )


def _check_graph_contract(root: Path, manifest: BundleManifest) -> None:
    """The manifest describes the graph this runtime drives: its I/O names and layout tag."""
    exp_in, exp_out = expected_io_names(manifest.model_config.n_layers)
    if list(manifest.inputs) != exp_in or list(manifest.outputs) != exp_out:
        raise BundleError(
            f"manifest I/O names do not describe a {manifest.model_config.n_layers}-layer KV-cache graph "
            f"(inputs {manifest.inputs[:4]}..., outputs {manifest.outputs[:3]}...)",
            where=str(root / BUNDLE_MANIFEST),
            hint="re-export the bundle with this version of gptmed-infer",
        )
    layout = manifest.extra.get("graph_layout")
    if layout != GRAPH_LAYOUT:
        raise BundleError(
            f"the bundle's graph layout is {layout!r}; this gptmed-infer runs {GRAPH_LAYOUT!r}",
            where=str(root),
            hint="re-export it: gptmed-infer export --checkpoint CKPT --out BUNDLE",
        )


def load_bundle(path: str | os.PathLike[str], variant: str | None = None, verify: bool = True) -> Bundle:
    """Load the bundle at ``path`` (its folder, or one of its ``.onnx`` files) and verify it.

    ``variant``: ``None``/``"fp32"`` for ``model.onnx``, ``"int8"`` for ``model.int8.onnx``; a
    path to an ``.onnx`` file chooses that file. Raises :class:`gptmed.core.BundleError`.
    """
    p = Path(path)
    root, model_file = _locate(p, variant)
    if not root.exists():
        raise BundleError(
            "bundle not found", where=str(p), hint="export one with: gptmed-infer export --out DIR"
        )
    manifest_path = root / BUNDLE_MANIFEST
    if not manifest_path.is_file():
        raise BundleError(
            f"no {BUNDLE_MANIFEST} beside the model",
            where=str(root),
            hint="a bundle is the folder written by gptmed-infer export; export one or pass its folder",
        )
    manifest = BundleManifest.load(manifest_path)
    for name in manifest.files:
        _check_name(name, root)
    if model_file not in manifest.files:
        raise BundleError(
            f"{model_file} is not part of this bundle (files: {sorted(manifest.files)})",
            where=str(manifest_path),
            hint="export it (int8: gptmed-infer export --quantize int8)"
            if model_file == MODEL_INT8_FILE
            else None,
        )
    model_path = root / model_file
    if not model_path.is_file():
        raise BundleError(f"{model_file} is missing", where=str(root), hint="re-export the bundle")
    data = model_path.read_bytes()
    if verify:
        _verify_checksums(root, manifest, model_file, data)
    external = find_external_data(data)
    if external:
        raise BundleError(
            f"{model_file} refers to external data files ({', '.join(sorted(external)[:3])}); "
            "bundles must store their weights inside the graph",
            where=str(model_path),
            hint="re-export with gptmed-infer export (which never writes external data)",
        )
    if not (root / TOKENIZER_FILE).is_file():
        raise BundleError(f"{TOKENIZER_FILE} is missing", where=str(root), hint="re-export the bundle")
    _check_graph_contract(root, manifest)
    _log.debug("bundle %s verified (%s, %d files)", root, model_file, len(manifest.files))
    return Bundle(root, manifest, model_file, data, root / TOKENIZER_FILE)


# --- the ONNX walk that finds tensors stored as external data ------------------------------------
# onnxruntime reads such tensors from files the sha256 checks do not cover (relative to the working
# folder for a graph loaded from bytes), so a bundle with any is refused. By hand, with gptmed-core's
# wire-format walk: protobuf's schema-less walk is ~100x slower on a 40 MB graph (it copies every
# nested message) and onnx is no runtime dependency (bench/protobuf_readers.py).
# Field numbers are those of onnx.proto.


def _messages(buf: memoryview, *numbers: int) -> Iterator[tuple[int, memoryview]]:
    """(field number, nested message) of the length-delimited fields ``numbers`` of ``buf``."""
    for num, wire, value in fields(buf):
        if wire == LEN and num in numbers and isinstance(value, memoryview):
            yield num, value


def _tensor_external(buf: memoryview, found: set[str]) -> None:
    location = b""
    external = False
    for num, wire, value in fields(buf):
        if num == 14 and wire == VARINT and value == 1:  # data_location = EXTERNAL
            external = True
        elif (
            num == 13 and wire == LEN and isinstance(value, memoryview)
        ):  # external_data entry (StringStringEntryProto)
            external = True
            entry = {n: bytes(v) for n, v in _messages(value, 1, 2)}
            if entry.get(1) == b"location":
                location = entry.get(2, b"")
    if external:
        found.add(location.decode("utf-8", "replace") or "<unnamed>")


def _graph_external(buf: memoryview, found: set[str]) -> None:
    for num, value in _messages(buf, 1, 5, 15):
        if num == 5:  # initializer
            _tensor_external(value, found)
        elif num == 15:  # sparse_initializer: values=1, indices=2
            for _, tensor in _messages(value, 1, 2):
                _tensor_external(tensor, found)
        else:  # node
            _node_external(value, found)


def _node_external(buf: memoryview, found: set[str]) -> None:
    for _, attribute in _messages(buf, 5):
        for n, v in _messages(attribute, 5, 6, 10, 11):
            if n in (5, 11):  # t, tensors
                _tensor_external(v, found)
            else:  # g, graphs
                _graph_external(v, found)


def find_external_data(model: bytes) -> set[str]:
    """Locations of tensors in the serialized ONNX ``model`` that live in external files."""
    found: set[str] = set()
    try:
        for num, value in _messages(memoryview(model), 7, 25):
            if num == 7:  # graph
                _graph_external(value, found)
            else:  # functions: FunctionProto.node = 7
                for _, node in _messages(value, 7):
                    _node_external(node, found)
    except WireError as exc:
        raise BundleError(f"not an ONNX model ({exc})", hint="re-export the bundle") from None
    return found
