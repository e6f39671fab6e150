"""Eval metrics on known strings."""

from __future__ import annotations

import pytest
from gptmed.inference.evaluate import exact_match, normalize_answer, rouge_l, token_f1


def test_normalisation_drops_case_punctuation_and_articles() -> None:
    assert normalize_answer("The Kidney, filters  blood!") == ["kidney", "filters", "blood"]


def test_metrics() -> None:
    assert exact_match("A broken bone.", "a broken bone") == 1.0
    assert exact_match("broken", "a broken bone") == 0.0
    assert token_f1("broken bone here", "a broken bone") == pytest.approx(0.8)
    assert rouge_l("bone broken", "broken bone") == pytest.approx(0.5)
    assert rouge_l("x", "y") == 0.0 and token_f1("", "") == 1.0
