"""Scores of generated text against references: BLEU (sacrebleu), ROUGE-L (rouge-score), WER/CER
(jiwer), exact match, and for the digits tasks whether the text names the right digit.

Pure host-side functions over lists of strings, so the end-of-run evaluation, the tests and the
benchmarks score captions the same way.
"""

from __future__ import annotations

from collections.abc import Sequence

import jiwer
import numpy as np
import sacrebleu

from crossmodal_jax.data.digits import NUMBER_WORDS


def _normalize(text: str) -> str:
    # Lowercase, single spaces: captions differ from references only in content, not in spacing.
    return " ".join(text.lower().split())


def text_metrics(
    hypotheses: Sequence[str], references: Sequence[Sequence[str]]
) -> dict[str, float]:
    """Corpus BLEU, mean ROUGE-L F1, WER, CER and exact match.

    `references[i]` lists every acceptable text of example i (several captions per image give a
    multi-reference BLEU); WER/CER and ROUGE-L use the best-matching reference of each example.
    """
    if len(hypotheses) != len(references) or not hypotheses:
        raise ValueError(
            f"need one reference list per hypothesis, got {len(hypotheses)} and {len(references)}"
        )
    hyps = [_normalize(h) for h in hypotheses]
    refs = [[_normalize(r) for r in rs] for rs in references]
    width = max(len(rs) for rs in refs)
    # sacrebleu wants reference *streams*; pad shorter lists by repeating their first entry.
    streams = [[rs[min(j, len(rs) - 1)] for rs in refs] for j in range(width)]
    bleu = sacrebleu.corpus_bleu(hyps, streams).score

    from rouge_score import rouge_scorer  # imports nltk (~1 s): only when captions are scored

    scorer = rouge_scorer.RougeScorer(["rougeL"])
    rouge, best = [], []
    for h, rs in zip(hyps, refs, strict=True):
        scores = [scorer.score(r, h)["rougeL"].fmeasure for r in rs]
        rouge.append(max(scores))
        best.append(rs[int(np.argmax(scores))])
    # jiwer refuses empty references; an empty hypothesis is fine (all deletions).
    return {
        "bleu": float(bleu),
        "rougeL": float(np.mean(rouge)),
        "wer": float(jiwer.wer(best, hyps)),
        "cer": float(jiwer.cer(best, hyps)),
        "exact_match": float(np.mean([h in rs for h, rs in zip(hyps, refs, strict=True)])),
    }


def named_digits(text: str) -> list[int]:
    """The digits a text names as words, in order ("the digit seven" -> [7])."""
    words = _normalize(text).split()
    return [NUMBER_WORDS.index(w) for w in words if w in NUMBER_WORDS]


def digit_naming_accuracy(hypotheses: Sequence[str], labels: Sequence[int]) -> float:
    """Fraction of texts that name exactly one digit, the right one."""
    hits = [named_digits(h) == [int(y)] for h, y in zip(hypotheses, labels, strict=True)]
    return float(np.mean(hits))
