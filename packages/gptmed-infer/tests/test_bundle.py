"""Bundle verification: sha256, external data, file names, I/O names checked at load."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from gptmed.core import BundleError, ManifestError, sha256_file
from gptmed.inference import TextGenerator, load_bundle
from gptmed.inference.bundle import find_external_data


@pytest.fixture()
def copy(artifacts, tmp_path: Path) -> Path:  # type: ignore[no-untyped-def]
    dst = tmp_path / "bundle"
    shutil.copytree(artifacts.bundle, dst)
    return dst


def _rewrite_manifest(bundle: Path, **changes) -> None:  # type: ignore[no-untyped-def]
    data = json.loads((bundle / "gptmed.json").read_text())
    data.update(changes)
    (bundle / "gptmed.json").write_text(json.dumps(data))


def test_bundle_layout_and_manifest(artifacts) -> None:  # type: ignore[no-untyped-def]
    b = load_bundle(artifacts.bundle)
    names = sorted(p.name for p in artifacts.bundle.iterdir())
    assert names == ["genai_config.json", "gptmed.json", "model.int8.onnx", "model.onnx", "tokenizer.model"]
    m = b.manifest
    assert set(m.files) == set(names) - {"gptmed.json"}
    assert all(sha256_file(artifacts.bundle / n) == h for n, h in m.files.items())
    assert m.inputs[:4] == ["input_ids", "position_ids", "attention_mask", "num_logits_to_keep"]
    assert m.inputs[4:6] == ["past_key_values.0.key", "past_key_values.0.value"]
    assert m.outputs[:3] == ["logits", "present.0.key", "present.0.value"]
    assert m.tokenizer_sha256 == m.files["tokenizer.model"]
    assert m.model_config == artifacts.config
    assert {"gptmed-infer", "onnxruntime", "torch"} <= set(m.versions)
    assert m.extra["parity"]["prefill_max_abs_diff"] <= 1e-4
    assert m.extra["parity"]["decode_max_abs_diff"] <= 1e-4


def test_tied_embedding_is_stored_once(artifacts) -> None:  # type: ignore[no-untyped-def]
    import onnx

    model = onnx.load(str(artifacts.bundle / "model.onnx"))
    v, c = artifacts.config.vocab_size, artifacts.config.d_model
    big = [tuple(i.dims) for i in model.graph.initializer if set(i.dims) == {v, c}]
    assert big == [(v, c)]


@pytest.mark.parametrize("name", ["model.onnx", "tokenizer.model", "genai_config.json"])
def test_modified_file_fails_sha256(copy: Path, name: str) -> None:
    with open(copy / name, "ab") as fh:
        fh.write(b"\0")
    with pytest.raises(BundleError, match=f"{name} does not match its sha256"):
        TextGenerator.from_bundle(copy)


def test_missing_manifest_and_missing_folder(copy: Path, tmp_path: Path) -> None:
    (copy / "gptmed.json").unlink()
    with pytest.raises(BundleError, match="no gptmed.json"):
        load_bundle(copy)
    with pytest.raises(BundleError, match="not found"):
        load_bundle(tmp_path / "nope")


def test_corrupt_manifest(copy: Path) -> None:
    (copy / "gptmed.json").write_text("{not json")
    with pytest.raises(ManifestError, match="not valid JSON"):
        load_bundle(copy)


def test_file_names_escaping_the_bundle_are_refused(copy: Path) -> None:
    data = json.loads((copy / "gptmed.json").read_text())
    data["files"]["../outside.bin"] = "0" * 64
    (copy / "gptmed.json").write_text(json.dumps(data))
    with pytest.raises(BundleError, match="not a plain file name"):
        load_bundle(copy)


def test_external_data_is_refused(copy: Path) -> None:
    import onnx

    model = onnx.load(str(copy / "model.onnx"))
    onnx.save_model(
        model,
        str(copy / "model.onnx"),
        save_as_external_data=True,
        all_tensors_to_one_file=True,
        location="weights.bin",
        size_threshold=0,
    )
    assert find_external_data((copy / "model.onnx").read_bytes()) == {"weights.bin"}
    data = json.loads((copy / "gptmed.json").read_text())
    data["files"]["model.onnx"] = sha256_file(copy / "model.onnx")
    (copy / "gptmed.json").write_text(json.dumps(data))
    with pytest.raises(BundleError, match="external data"):
        load_bundle(copy)


def test_inline_bundle_has_no_external_data(artifacts) -> None:  # type: ignore[no-untyped-def]
    assert find_external_data((artifacts.bundle / "model.onnx").read_bytes()) == set()


def test_a_cut_graph_is_not_an_onnx_model(artifacts) -> None:  # type: ignore[no-untyped-def]
    data = (artifacts.bundle / "model.onnx").read_bytes()
    with pytest.raises(BundleError, match=r"not an ONNX model \(field 7 runs past the end"):
        find_external_data(data[: len(data) // 2])


def test_graph_io_differing_from_manifest_fails_at_load(copy: Path) -> None:
    import onnx

    model = onnx.load(str(copy / "model.onnx"))
    old = model.graph.output[0].name
    for node in model.graph.node:
        node.output[:] = ["scores" if o == old else o for o in node.output]
    model.graph.output[0].name = "scores"
    onnx.save_model(model, str(copy / "model.onnx"))
    data = json.loads((copy / "gptmed.json").read_text())
    data["files"]["model.onnx"] = sha256_file(copy / "model.onnx")
    (copy / "gptmed.json").write_text(json.dumps(data))
    with pytest.raises(BundleError, match="inputs/outputs differ from the manifest"):
        TextGenerator.from_bundle(copy)  # at load, not at the first request


def test_a_graph_onnxruntime_rejects_names_the_onnxruntime_version(copy: Path) -> None:
    """An older onnxruntime rejects the graph's GroupQueryAttention (1.17 did): re-exporting cannot
    help there, so the error says which onnxruntime runs and which gptmed-infer needs."""
    import onnx
    import onnxruntime as ort

    model = onnx.load(str(copy / "model.onnx"))
    next(n for n in model.graph.node if n.op_type == "GroupQueryAttention").op_type = "NoSuchAttention"
    onnx.save_model(model, str(copy / "model.onnx"))
    data = json.loads((copy / "gptmed.json").read_text())
    data["files"]["model.onnx"] = sha256_file(copy / "model.onnx")
    (copy / "gptmed.json").write_text(json.dumps(data))
    with pytest.raises(BundleError, match="onnxruntime cannot load model.onnx") as err:
        TextGenerator.from_bundle(copy)
    assert f"this is onnxruntime {ort.__version__} (gptmed-infer needs >= 1.18" in str(err.value)


def test_manifest_io_names_not_matching_the_config_fail(copy: Path) -> None:
    data = json.loads((copy / "gptmed.json").read_text())
    data["inputs"] = data["inputs"][:-2]
    (copy / "gptmed.json").write_text(json.dumps(data))
    with pytest.raises(BundleError, match="I/O names"):
        load_bundle(copy)


def test_missing_int8_variant_is_named(artifacts, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    dst = tmp_path / "b"
    shutil.copytree(artifacts.bundle, dst)
    data = json.loads((dst / "gptmed.json").read_text())
    del data["files"]["model.int8.onnx"]
    (dst / "gptmed.json").write_text(json.dumps(data))
    with pytest.raises(BundleError, match="--quantize int8"):
        load_bundle(dst, variant="int8")
