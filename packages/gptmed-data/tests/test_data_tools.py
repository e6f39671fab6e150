"""validate, stats, split, synth and the embedded sample."""

from __future__ import annotations

import json
import os

import pytest
from data_testutil import PAIRS, canonical, jsonl, read_pairs
from gptmed.core import DataError, QAPair
from gptmed.data import (
    compute_stats,
    iter_records,
    normalize_key,
    sample_info,
    sample_path,
    split,
    synth,
    validate,
)
from gptmed.data.stats import LengthSummary

ROWS = [{"question": p.question, "answer": p.answer} for p in PAIRS]


# --- validate ----------------------------------------------------------------------------------


def test_validate_ok(write):
    report = validate(write("ok.txt", canonical(PAIRS)))
    assert report.ok and report.pairs == 3 and report.format == "txt"
    assert report.to_text().endswith("OK")


def test_validate_lists_every_problem_with_its_place(write):
    text = (
        jsonl(ROWS[:1])
        + "{bad\n"
        + jsonl(ROWS[1:2])
        + '{"question": "Q?", "answer": 3}\n'
        + '{"question": " ", "answer": "x"}\n'
    )
    report = validate(write("v.jsonl", text))
    assert not report.ok and report.pairs == 2 and report.records == 5
    assert report.invalid == {"bad_json": 1, "not_string": 1, "empty_question": 1}
    assert [p.split(": ", 1)[0].rsplit(":", 1)[1] for p in report.problems] == ["2", "4", "5"]


def test_validate_reports_fatal_errors(write):
    report = validate(write("u.csv", 'question,answer\n"open,quote\n'))
    assert not report.ok and "unterminated quoted field" in (report.fatal or "")
    report = validate(write("e.txt", ""))
    assert not report.ok and "no Q&A records" in (report.fatal or "")


# --- stats -------------------------------------------------------------------------------------


def test_length_summary_percentiles():
    from collections import Counter

    s = LengthSummary.from_counts(Counter({k: 1 for k in range(1, 101)}))
    assert (s.min, s.p10, s.p50, s.p90, s.p99, s.max, s.mean) == (1, 10, 50, 90, 99, 100, 50.5)
    s = LengthSummary.from_counts(Counter({5: 3}))
    assert (s.min, s.p10, s.p50, s.p99, s.max) == (5, 5, 5, 5, 5)


def test_stats_counts_quality_problems(write):
    long = " ".join(["w"] * 501)
    rows = [
        *ROWS,
        ROWS[0],  # exact duplicate
        {"question": "WHAT is dna", "answer": ROWS[0]["answer"] + " "},  # normalised duplicate
        {"question": "What is DNA?", "answer": "Something else entirely, said in more than ten words here."},
        {"question": "Short?", "answer": "Too short."},
        {"question": "Long?", "answer": long},
        {"question": "", "answer": "empty question"},
    ]
    report = compute_stats(write("s.jsonl", jsonl(rows)), skip_invalid=True)
    assert report.pairs == 8
    assert report.exact_duplicates == 1
    assert report.normalized_duplicates == 2
    assert report.duplicate_questions == 3
    assert report.short_answers == 1 and report.long_answers == 1
    assert report.empty == 1 and report.invalid == {"empty_question": 1}
    assert report.answer_words.max == 501 and report.question_words.min == 1
    data = json.loads(json.dumps(report.to_dict()))
    assert data["answer_words"]["max"] == 501
    assert "answers > 500 words" in report.to_text()
    counts = [line for line in report.to_text().splitlines() if line.startswith("  ") and "min" not in line]
    assert len({len(line) for line in counts}) == 1, counts  # every count ends in the same column


def test_normalize_key():
    assert normalize_key("What is DNA?") == normalize_key("what  is dna") == "what is dna"
    assert normalize_key("Ｃａｆé!") == "café"
    assert normalize_key("a_b-c") == "a b c"


# --- split -------------------------------------------------------------------------------------


def _many(n: int) -> list[QAPair]:
    return [QAPair(f"Question number {i}?", f"Answer number {i}.") for i in range(n)]


def test_split_by_question_is_seeded_and_disjoint(write, tmp_path):
    pairs = _many(200)
    # Same question (after normalisation) with different answers must stay together.
    pairs += [QAPair("question NUMBER 7", "Another answer."), QAPair("Question number 7?", "A third answer.")]
    src = write("all.txt", canonical(pairs))
    r1 = split(src, tmp_path / "a", val=0.1, test=0.05, seed=1)
    split(src, tmp_path / "b", val=0.1, test=0.05, seed=1)
    split(src, tmp_path / "c", val=0.1, test=0.05, seed=2)
    assert r1.questions == {"train": 170, "val": 20, "test": 10}
    assert sum(r1.pairs.values()) == 202
    for name in ("train", "val", "test"):
        assert (tmp_path / "a" / f"{name}.txt").read_bytes() == (tmp_path / "b" / f"{name}.txt").read_bytes()
    assert (tmp_path / "a" / "val.txt").read_bytes() != (tmp_path / "c" / "val.txt").read_bytes()
    keys = {n: {normalize_key(p.question) for p in read_pairs(tmp_path / "a" / f"{n}.txt")} for n in r1.files}
    assert (
        not (keys["train"] & keys["val"])
        and not (keys["train"] & keys["test"])
        and not (keys["val"] & keys["test"])
    )
    split_of_7 = [n for n, k in keys.items() if "question number 7" in k]
    assert len(split_of_7) == 1
    assert (
        len(
            [
                p
                for p in read_pairs(tmp_path / "a" / f"{split_of_7[0]}.txt")
                if normalize_key(p.question) == "question number 7"
            ]
        )
        == 3
    )


def test_split_refuses_existing_files_and_bad_fractions(write, tmp_path):
    src = write("all.txt", canonical(_many(10)))
    split(src, tmp_path / "o", val=0.2)
    assert sorted(os.listdir(tmp_path / "o")) == ["train.txt", "val.txt"]
    with pytest.raises(DataError, match="exists"):
        split(src, tmp_path / "o", val=0.2)
    split(src, tmp_path / "o", val=0.2, overwrite=True, output_format="jsonl")
    with pytest.raises(ValueError, match="val \\+ test must be < 1"):
        split(src, tmp_path / "p", val=0.6, test=0.5)
    with pytest.raises(DataError, match="too few"):
        split(write("one.txt", canonical(_many(1))), tmp_path / "q", val=0.5)


# --- synth -------------------------------------------------------------------------------------


def test_synth_is_deterministic_and_holds_out_phrasings(tmp_path):
    a, b, c = synth(50, seed=3), synth(50, seed=3), synth(50, seed=4)
    assert a.train == b.train and a.heldout == b.heldout and a.train != c.train
    assert len(a.facts) == 50 and len(a.train) == 150 and len(a.heldout) == 50
    train_q = {p.question for p in a.train}
    assert not train_q & {p.question for p in a.heldout}  # held-out phrasings never trained on
    answers = {p.answer for p in a.train}
    assert all(p.answer in answers for p in a.heldout)  # ... but every held-out fact is trained on
    fact = a.facts[0]
    assert fact.answer.count(fact.entity) == 1 and fact.value in fact.answer
    assert len({f.entity for f in a.facts}) == 10  # 5 relations per invented place
    a.write(tmp_path / "t.txt", tmp_path / "h.txt")
    assert read_pairs(tmp_path / "t.txt") == a.train and read_pairs(tmp_path / "h.txt") == a.heldout
    with pytest.raises(DataError, match="exists"):
        a.write(tmp_path / "t.txt")


def test_synth_rejects_bad_arguments():
    with pytest.raises(ValueError, match="n_facts"):
        synth(0)
    with pytest.raises(ValueError, match="heldout_per_fact"):
        synth(5, phrasings_per_fact=2, heldout_per_fact=2)


# --- the embedded sample -----------------------------------------------------------------------


def test_sample_path_is_canonical_text():
    path = sample_path()
    assert path.name == "sample_qa.txt" and path.is_file()
    pairs = list(iter_records(path))
    assert len(pairs) >= 100
    info = sample_info()
    assert info.pairs == len(pairs) and info.license and "LICENSE" in info.license_path
