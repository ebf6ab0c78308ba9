"""Caption metrics as the MS COCO caption evaluation (``pycocoevalcap``) computes them:
BLEU-1..4, ROUGE-L, CIDEr-D, and METEOR.

BLEU, ROUGE-L and CIDEr-D are computed here, in Python, with pycocoevalcap's definitions
(corpus BLEU with the "closest" reference length and its 1e-15 / 1e-9 smoothing constants;
ROUGE-L F with beta 1.2 against the best reference; CIDEr-D with sigma 6, clipped n-gram
counts, document frequencies over the evaluated set's references, x 10), so the demo and the
evaluator need no optional package; the tests check the values against pycocoevalcap's own
scorers when it is installed (``pip install fusedembed-alignment[captions]``). METEOR is the
METEOR 1.5 jar shipped in pycocoevalcap, so it needs that package and ``java``; without
either, :func:`caption_scores` leaves METEOR out and says why in ``skipped``. SPICE is never
run (its jar downloads Stanford models on first use).

Tokenisation (:func:`ptb_tokenize`): pycocoevalcap runs the Stanford PTB tokenizer (Java)
and drops punctuation tokens. Here the same is done in Python: lower-case, split clitics the
way PTB does ("man's" -> "man 's", "don't" -> "do n't", "they're" -> "they 're"), split off
punctuation (not the hyphens inside a word), name brackets as PTB does, then drop
pycocoevalcap's punctuation list. It differs from the Java tokenizer on
rarer cases (abbreviations with periods, URLs, numbers with commas), which captions rarely hold.
"""

import math
import re
import shutil
from collections import Counter
from typing import Dict, List, Mapping, Sequence

# pycocoevalcap.tokenizer.ptbtokenizer.PUNCTUATIONS
PUNCTUATIONS = {"''", "'", "``", "`", "-LRB-", "-RRB-", "-LCB-", "-RCB-", ".", "?", "!", ",", ":", "-",
                "--", "...", ";"}
_CLITICS = re.compile(r"(?i)(\w)(n't|'s|'re|'ve|'m|'ll|'d)\b")
_PUNCT = re.compile(r"(\.\.\.|--|(?<!\w)-|-(?!\w)|[^\w\s'-])")     # "3-year-old" stays one word
# PTB's names of brackets and double quotes; with -lowerCase the bracket names come out
# lower-cased, so pycocoevalcap's list (upper case) does not remove them: "-lrb-" is a word.
_PTB_NAMES = {"(": "-lrb-", ")": "-rrb-", "{": "-lcb-", "}": "-rcb-", "[": "-lsb-", "]": "-rsb-",
              '"': "''"}


def ptb_tokenize(text: str) -> str:
    """A caption as pycocoevalcap's PTB tokenizer leaves it: lower-cased tokens joined by
    single spaces, punctuation removed."""
    text = text.lower().replace("\n", " ")
    text = re.sub(r"(^|\s)'", r"\1' ", text)              # an opening quote: 'hello
    text = _CLITICS.sub(r"\1 \2", text)
    text = re.sub(r"(\w)'(\s|$)", r"\1 '\2", text)         # a closing quote or "dogs'"
    text = _PUNCT.sub(r" \1 ", text)
    words = (_PTB_NAMES.get(w, w) for w in text.split())
    return " ".join(w for w in words if w not in PUNCTUATIONS)


def _ngrams(words: Sequence[str], n: int = 4) -> Counter:
    return Counter(tuple(words[i:i + k]) for k in range(1, n + 1) for i in range(len(words) - k + 1))


def _check(refs: Mapping, hyps: Mapping):
    if refs.keys() != hyps.keys():
        missing = sorted(set(refs) ^ set(hyps), key=str)[:5]
        raise ValueError(f"caption metrics: refs and hyps must have the same ids, they differ on {missing}")
    for k in refs:
        if not refs[k]:
            raise ValueError(f"caption metrics: id {k!r} has no reference caption")


def bleu(refs: Mapping[object, List[str]], hyps: Mapping[object, str], n: int = 4) -> List[float]:
    """Corpus BLEU-1..n (pycocoevalcap ``Bleu``): clipped n-gram matches and brevity penalty
    summed over the set, the reference length of a caption the one closest to its length."""
    _check(refs, hyps)
    tiny, small = 1e-15, 1e-9
    correct, guess = [0] * n, [0] * n
    test_len = ref_len = 0
    for k in refs:
        words = hyps[k].split()
        ref_words = [r.split() for r in refs[k]]
        max_counts: Counter = Counter()
        for r in ref_words:
            for g, c in _ngrams(r, n).items():
                max_counts[g] = max(max_counts[g], c)
        test_len += len(words)
        ref_len += min((abs(len(r) - len(words)), len(r)) for r in ref_words)[1]
        for g, c in _ngrams(words, n).items():
            correct[len(g) - 1] += min(max_counts.get(g, 0), c)
        for j in range(n):
            guess[j] += max(0, len(words) - j)
    scores, prod = [], 1.0
    for j in range(n):
        prod *= (correct[j] + tiny) / (guess[j] + small)
        scores.append(prod ** (1 / (j + 1)))
    ratio = (test_len + tiny) / (ref_len + small)
    if ratio < 1:
        scores = [s * math.exp(1 - 1 / ratio) for s in scores]
    return scores


def _lcs(a: Sequence[str], b: Sequence[str]) -> int:
    prev = [0] * (len(b) + 1)
    for x in a:
        cur = [0]
        for j, y in enumerate(b):
            cur.append(prev[j] + 1 if x == y else max(prev[j + 1], cur[j]))
        prev = cur
    return prev[-1]


def rouge_l(refs: Mapping[object, List[str]], hyps: Mapping[object, str], beta: float = 1.2) -> float:
    """Mean over captions of ROUGE-L F (pycocoevalcap ``Rouge``): the best LCS precision and the
    best LCS recall over the references."""
    _check(refs, hyps)
    total = 0.0
    for k in refs:
        cand = hyps[k].split(" ")
        pairs = [(_lcs(r.split(" "), cand), len(r.split(" "))) for r in refs[k]]
        p = max(lcs / len(cand) for lcs, _ in pairs)
        r = max(lcs / n for lcs, n in pairs)
        total += (1 + beta ** 2) * p * r / (r + beta ** 2 * p) if p and r else 0.0
    return total / max(len(refs), 1)


def cider_d(refs: Mapping[object, List[str]], hyps: Mapping[object, str], n: int = 4,
            sigma: float = 6.0) -> float:
    """CIDEr-D (pycocoevalcap ``Cider``): tf-idf n-gram vectors (idf from the references of
    this set), hypothesis counts clipped at the reference's, a Gaussian penalty on the length
    difference, averaged over n = 1..n and the references, x 10, then over captions."""
    _check(refs, hyps)
    ref_counts = {k: [_ngrams(r.split(), n) for r in refs[k]] for k in refs}
    df: Counter = Counter()
    for per in ref_counts.values():
        df.update({g for c in per for g in c})
    log_n = math.log(float(len(refs)))

    def vec(counts):
        v = [dict() for _ in range(n)]
        norm = [0.0] * n
        length = 0
        for g, tf in counts.items():
            w = tf * (log_n - math.log(max(1.0, df.get(g, 0.0))))
            v[len(g) - 1][g] = w
            norm[len(g) - 1] += w * w
            if len(g) == 2:              # pycocoevalcap counts the length from the bigrams
                length += tf
        return v, [math.sqrt(x) for x in norm], length

    total = 0.0
    for k in refs:
        vh, nh, lh = vec(_ngrams(hyps[k].split(), n))
        score = [0.0] * n
        for rc in ref_counts[k]:
            vr, nr, lr = vec(rc)
            penalty = math.exp(-((lh - lr) ** 2) / (2 * sigma ** 2))
            for j in range(n):
                val = sum(min(w, vr[j].get(g, 0.0)) * vr[j].get(g, 0.0) for g, w in vh[j].items())
                if nh[j] != 0 and nr[j] != 0:
                    val /= nh[j] * nr[j]
                score[j] += val * penalty
        total += sum(score) / n / len(ref_counts[k]) * 10.0
    return total / max(len(refs), 1)


def meteor_available() -> str:
    """'' when METEOR can run, else why not."""
    try:
        import pycocoevalcap.meteor.meteor  # noqa: F401
    except ImportError:
        return "METEOR skipped: pycocoevalcap is not installed (pip install fusedembed-alignment[captions])"
    if shutil.which("java") is None:
        return "METEOR skipped: no java on PATH (the METEOR 1.5 jar needs it)"
    return ""


_METEOR = None


def meteor(refs: Mapping[object, List[str]], hyps: Mapping[object, str]) -> float:
    """METEOR 1.5 through pycocoevalcap's jar (needs pycocoevalcap and java)."""
    _check(refs, hyps)
    why = meteor_available()
    if why:
        raise RuntimeError(why)
    global _METEOR
    if _METEOR is None:
        from pycocoevalcap.meteor.meteor import Meteor

        _METEOR = Meteor()           # one JVM for the process: starting one costs seconds
    score, _ = _METEOR.compute_score({k: list(v) for k, v in refs.items()}, {k: [v] for k, v in hyps.items()})
    return float(score)


def caption_scores(refs: Mapping[object, List[str]], hyps: Mapping[object, str], *,
                   tokenize: bool = True, use_meteor: bool = True) -> Dict[str, object]:
    """``{"BLEU-1".."BLEU-4", "ROUGE-L", "CIDEr-D", "METEOR" (when it can run), "skipped": [...]}``
    for raw captions (``tokenize``: PTB-tokenised first, as pycocoevalcap's evaluation does)."""
    if tokenize:
        refs = {k: [ptb_tokenize(r) for r in v] for k, v in refs.items()}
        hyps = {k: ptb_tokenize(v) for k, v in hyps.items()}
    out: Dict[str, object] = {f"BLEU-{i + 1}": s for i, s in enumerate(bleu(refs, hyps))}
    out["ROUGE-L"] = rouge_l(refs, hyps)
    out["CIDEr-D"] = cider_d(refs, hyps)
    skipped = []
    why = meteor_available() if use_meteor else "METEOR skipped: not asked for"
    if why:
        skipped.append(why)
    else:
        out["METEOR"] = meteor(refs, hyps)
    out["skipped"] = skipped
    return out
