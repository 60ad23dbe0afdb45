"""Caption scores against their definitions, and digit naming."""

import pytest

from crossmodal_jax.evaluation.text_metrics import digit_naming_accuracy, named_digits, text_metrics


def test_text_metrics_match_their_definitions():
    perfect = text_metrics(["the digit five moves up"], [["the digit five moves up"]])
    assert perfect["bleu"] == pytest.approx(100.0)
    assert perfect["wer"] == 0.0 and perfect["cer"] == 0.0 and perfect["exact_match"] == 1.0
    assert perfect["rougeL"] == pytest.approx(1.0)
    # One substituted word of four: WER 1/4; exact match 0; spacing and case are normalised.
    m = text_metrics(["Seven  one two three"], [["seven one two four"]])
    assert m["wer"] == pytest.approx(0.25) and m["exact_match"] == 0.0
    # Several references: the best one counts.
    m = text_metrics(["a handwritten five"], [["the digit five", "a handwritten five"]])
    assert m["exact_match"] == 1.0 and m["wer"] == 0.0
    with pytest.raises(ValueError, match="one reference list per hypothesis"):
        text_metrics(["a"], [])


def test_digit_naming_needs_exactly_the_right_digit():
    assert named_digits("the digit seven moves left") == [7]
    hyps = ["the digit seven", "the digit seven or one", "a handwritten sevn", "three"]
    assert digit_naming_accuracy(hyps, [7, 7, 7, 3]) == pytest.approx(0.5)
