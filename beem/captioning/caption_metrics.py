"""Caption quality: corpus BLEU-4 (sacrebleu) and CIDEr-D (Vedantam et al. 2015, as in the COCO toolkit).

CIDEr-D is written out here rather than taken from pycocoevalcap, whose package also pulls Java-based scorers:
TF-IDF-weighted n-gram (1-4) cosine similarity between candidate and references, with the document frequencies
taken from the references of the evaluated set, a Gaussian length penalty (sigma 6), clipping of candidate counts
by reference counts, averaged over n and references, times 10.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence

import sacrebleu

CIDER_N = 4
CIDER_SIGMA = 6.0


def bleu4(candidates: Sequence[str], references: Sequence[Sequence[str]]) -> float:
    """Corpus BLEU-4 in 0-100; each candidate has one or more references (ragged lists allowed)."""
    most = max(len(refs) for refs in references)
    # sacrebleu wants reference streams of equal length: repeat an image's last reference to fill its row.
    streams = [[refs[min(k, len(refs) - 1)] for refs in references] for k in range(most)]
    return float(sacrebleu.corpus_bleu(list(candidates), streams).score)


def _ngrams(caption: str) -> list[Counter[tuple[str, ...]]]:
    words = caption.lower().replace(",", " ,").split()
    return [Counter(tuple(words[i : i + n]) for i in range(len(words) - n + 1)) for n in range(1, CIDER_N + 1)]


def cider_d(candidates: Sequence[str], references: Sequence[Sequence[str]]) -> float:
    """Mean CIDEr-D over the images (COCO scale: about 0-10, 1.0 is a good captioner on COCO)."""
    reference_grams = [[_ngrams(ref) for ref in refs] for refs in references]
    document_frequency: Counter[tuple[str, ...]] = Counter()
    for grams in reference_grams:
        document_frequency.update({gram for ref in grams for per_n in ref for gram in per_n})
    log_documents = math.log(float(len(references)))

    def vector(counts: Counter[tuple[str, ...]]) -> tuple[dict[tuple[str, ...], float], float]:
        weights = {g: c * (log_documents - math.log(max(1.0, document_frequency[g]))) for g, c in counts.items()}
        return weights, math.sqrt(sum(w * w for w in weights.values()))

    scores = []
    for candidate, refs in zip(candidates, reference_grams, strict=True):
        candidate_grams = _ngrams(candidate)
        candidate_length = sum(candidate_grams[0].values())
        per_n = [0.0] * CIDER_N
        for ref in refs:
            delta = candidate_length - sum(ref[0].values())
            for n in range(CIDER_N):
                vc, norm_c = vector(candidate_grams[n])
                vr, norm_r = vector(ref[n])
                # CIDEr-D clips the candidate's weight at the reference's for each n-gram
                dot = sum(min(w, vr[g]) * vr[g] for g, w in vc.items() if g in vr)
                if norm_c and norm_r:
                    per_n[n] += dot / (norm_c * norm_r) * math.exp(-(delta**2) / (2 * CIDER_SIGMA**2))
        scores.append(sum(per_n) / CIDER_N / len(refs) * 10.0)
    return sum(scores) / len(scores)
