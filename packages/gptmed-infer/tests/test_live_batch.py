"""OnnxBackend's continuous-batching methods (LiveBatch): rows join, leave and decode together
with the same logits as each row alone, and a prompt prefilled in chunks equals one prefill; on
the fp32 graph and on the int8 one (its activations' scales are fixed at export)."""

from __future__ import annotations

import numpy as np
import pytest
from gptmed.inference.backends import BatchingBackend, LiveBatch

PROMPTS = [
    "What is fever?",
    "Explain 腎臓.",
    "Tell me about café au lait spot and also asthma.",
    "What is insulin?",
]


def _alone(backend, ids: list[int], tokens: list[int]) -> list[np.ndarray]:  # type: ignore[no-untyped-def]
    """Logits of the prompt, then of each of ``tokens`` fed after it, on a cache of its own."""
    arr = np.asarray([ids], dtype=np.int64)
    logits, state = backend.prefill(arr, np.ones_like(arr), capacity=len(ids) + len(tokens))
    out = [logits[0]]
    for tok in tokens:
        out.append(backend.decode(state, np.asarray([tok]))[0])
    return out


def test_rows_joining_and_leaving_decode_as_they_do_alone(variant_gen) -> None:  # type: ignore[no-untyped-def]
    backend = variant_gen.backend
    assert isinstance(backend, BatchingBackend)
    prompts = [variant_gen.encode_prompt(q) for q in PROMPTS]
    feeds = [[7 + r, 11, 13 + r, 17, 19, 23] for r in range(len(prompts))]  # tokens fed to each row
    alone = [_alone(backend, p, f) for p, f in zip(prompts, feeds, strict=True)]

    live = LiveBatch()
    backend.reserve(live, 1, 16)  # too small on purpose: joins grow it
    got: dict[int, list[np.ndarray]] = {r: [] for r in range(len(prompts))}
    rows: list[int] = []  # prompt index of each live row
    fed = {r: 0 for r in range(len(prompts))}

    def join(new: list[int]) -> None:
        width = max(len(prompts[r]) for r in new)
        ids = np.zeros((len(new), width), dtype=np.int64)
        mask = np.zeros_like(ids)
        for i, r in enumerate(new):
            ids[i, : len(prompts[r])], mask[i, : len(prompts[r])] = prompts[r], 1
        logits, state = backend.prefill(ids, mask, capacity=width)
        for i, r in enumerate(new):
            got[r].append(logits[i])
        backend.reserve(live, live.rows + len(new), 96)
        backend.join(live, state, list(range(len(new))))
        rows.extend(new)

    def step() -> None:
        tokens = np.asarray([feeds[r][fed[r]] for r in rows])
        logits = backend.step(live, tokens)
        for i, r in enumerate(rows):
            got[r].append(logits[i])
            fed[r] += 1

    join([0])
    step()
    join([1, 2])  # two newcomers while row 0 runs
    step()
    step()
    backend.keep(live, np.asarray([2, 1]))  # row 0 leaves; the others swap places
    rows[:] = [rows[2], rows[1]]
    step()
    join([3])
    step()
    for r, logits in got.items():
        for n, (a, b) in enumerate(zip(logits, alone[r], strict=False)):
            np.testing.assert_allclose(a, b, atol=1e-5, err_msg=f"prompt {r}, position {n}")
            assert int(np.argmax(a)) == int(np.argmax(b))


def test_a_prompt_prefilled_in_chunks_equals_one_prefill(variant_gen) -> None:  # type: ignore[no-untyped-def]
    backend = variant_gen.backend
    ids = variant_gen.encode_prompt("Tell me about hypertension, anemia, asthma and a fracture, please.")
    assert len(ids) > 12
    arr = np.asarray([ids], dtype=np.int64)
    whole, state_whole = backend.prefill(arr, np.ones_like(arr), capacity=len(ids) + 1)
    first = arr[:, :5]
    _, state = backend.prefill(first, np.ones_like(first), capacity=len(ids) + 1)
    for start in range(5, len(ids), 4):
        last = backend.extend(state, arr[:, start : start + 4])
    np.testing.assert_allclose(last, whole, atol=1e-5)
    assert list(state.lengths) == [len(ids)]
    # and the caches continue the same way
    np.testing.assert_allclose(
        backend.decode(state, np.asarray([9])), backend.decode(state_whole, np.asarray([9])), atol=1e-5
    )


def test_join_refuses_rows_the_store_has_no_room_for(onnx_gen) -> None:  # type: ignore[no-untyped-def]
    backend = onnx_gen.backend
    ids = np.asarray([onnx_gen.encode_prompt("What is fever?")] * 2, dtype=np.int64)
    _, state = backend.prefill(ids, np.ones_like(ids), capacity=ids.shape[1])
    live = LiveBatch()
    backend.reserve(live, 1, 64)
    with pytest.raises(ValueError, match="room for 1 rows"):
        backend.join(live, state, [0, 1])
    assert live.rows == 0
    assert backend.kv_bytes_per_token() * 64 == live.nbytes  # one row of 64 keys


def test_a_row_s_logits_do_not_move_with_the_rows_beside_it(variant_gen) -> None:  # type: ignore[no-untyped-def]
    """One left-padded prefill of every prompt gives each row the logits it gets alone, exactly
    (beyond float noise) on fp32 and int8 alike. The int8 graph of earlier exports (onnxruntime's
    dynamic quantization: one activation scale per MatMul over the whole batch) moved them by more
    than 1e-3 here (0.038 on the bench model). The int8 bound holds because the fp32 ops before each
    QuantizeLinear give a row the same bits whatever the batch on onnxruntime's CPU kernels: one
    rounding flip would move a logit by about one quantization step (~1e-3)."""
    gen = variant_gen
    prompts = [gen.encode_prompt(q) for q in PROMPTS]
    width = max(len(p) for p in prompts)
    ids = np.zeros((len(prompts), width), dtype=np.int64)
    mask = np.zeros_like(ids)
    for i, p in enumerate(prompts):
        ids[i, width - len(p) :], mask[i, width - len(p) :] = p, 1
    together, _ = gen.backend.prefill(ids, mask, capacity=width)
    alone = [_alone(gen.backend, p, [])[0] for p in prompts]
    moved = max(float(np.abs(together[i] - alone[i]).max()) for i in range(len(prompts)))
    assert moved < 1e-5, moved
