"""Comparing transcripts: word error rate and the normalised words it counts."""

from __future__ import annotations


def words_of(text: str) -> list[str]:
    """Lower-cased words without surrounding punctuation."""
    return [w.strip(".,?!'\"").lower() for w in text.split()]


def wer(reference: str, hypothesis: str) -> tuple[int, int]:
    """(word errors, reference words) by edit distance on ``words_of`` both texts."""
    ref, hyp = words_of(reference), words_of(hypothesis)
    d = list(range(len(hyp) + 1))
    for i, r in enumerate(ref, 1):
        prev, d[0] = d[0], i
        for j, h in enumerate(hyp, 1):
            prev, d[j] = d[j], min(d[j] + 1, d[j - 1] + 1, prev + (r != h))
    return d[len(hyp)], len(ref)
