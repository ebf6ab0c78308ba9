"""Caption metrics: hand-computed cases, and equality with pycocoevalcap's scorers."""

import math
import shutil

import pytest
from fusedembed_alignment.generator.metrics import bleu, caption_scores, cider_d, ptb_tokenize, rouge_l

RAW_REFS = {
    1: ["A man is riding a horse on the beach.", "A person rides a brown horse near the ocean.",
        "Man on horseback at the shore."],
    2: ["Two dogs play in the snow.", "Two brown dogs running through snow!", "The dogs are playing outside."],
    3: ["A woman's red umbrella in the rain.", "Someone holding a red umbrella, it's raining.",
        "A lady with an umbrella doesn't get wet."],
    4: ["A cat sleeps on a sofa.", "A grey cat asleep on the couch.", "The cat is sleeping."],
    5: ["Children playing soccer in a field.", "Kids kick a ball on the grass.", "A group of children play football."],
}
RAW_HYPS = {1: "A man riding a horse on the beach.", 2: "Two dogs are playing in the snow.",
            3: "A woman with a red umbrella.", 4: "A dog on a sofa.", 5: "Children play soccer on a field."}
REFS = {k: [ptb_tokenize(r) for r in v] for k, v in RAW_REFS.items()}
HYPS = {k: ptb_tokenize(v) for k, v in RAW_HYPS.items()}


def test_ptb_tokenize_splits_clitics_and_drops_punctuation():
    assert ptb_tokenize("A woman's umbrella, it doesn't RAIN!") == "a woman 's umbrella it does n't rain"
    assert ptb_tokenize("They're here... (maybe)") == "they 're here -lrb- maybe -rrb-"
    assert ptb_tokenize("A 3-year-old boy can't swim -- at all") == "a 3-year-old boy ca n't swim at all"


def test_bleu_by_hand():
    # One caption: 4 of 5 unigrams match; hypothesis length 5, closest reference 6 -> brevity penalty.
    refs = {0: ["the cat sat on the mat"]}
    hyps = {0: "the cat sat on mat"}
    b1 = bleu(refs, hyps)[0]
    p1 = 5 / 5             # every unigram of "the cat sat on mat" is in the reference
    assert b1 == pytest.approx(p1 * math.exp(1 - 6 / 5), rel=1e-6)
    assert bleu({0: ["a b c d"]}, {0: "a b c d"})[3] == pytest.approx(1.0)


def test_rouge_and_cider_by_hand():
    assert rouge_l({0: ["a b c d"]}, {0: "a b c d"}) == pytest.approx(1.0)
    # LCS("a b x d", "a b c d") = 3: P = R = 3/4 -> F = 3/4.
    assert rouge_l({0: ["a b c d"]}, {0: "a b x d"}) == pytest.approx(0.75)
    # CIDEr-D of a perfect match is 10 when every n-gram is unique to its image (idf is the same
    # for hypothesis and reference, cosine 1, no length penalty).
    refs = {0: ["a b c d"], 1: ["e f g h"]}
    assert cider_d(refs, {0: "a b c d", 1: "e f g h"}) == pytest.approx(10.0)
    assert cider_d(refs, {0: "e f g h", 1: "a b c d"}) == pytest.approx(0.0)


def test_matches_pycocoevalcap():
    pytest.importorskip("pycocoevalcap")
    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.cider.cider import Cider
    from pycocoevalcap.rouge.rouge import Rouge

    gts, res = {k: list(v) for k, v in REFS.items()}, {k: [v] for k, v in HYPS.items()}
    theirs_bleu, _ = Bleu(4).compute_score(gts, res, verbose=0)
    theirs_rouge, _ = Rouge().compute_score(gts, res)
    theirs_cider, _ = Cider().compute_score(gts, res)
    assert bleu(REFS, HYPS) == pytest.approx(theirs_bleu, rel=1e-9, abs=1e-12)
    assert rouge_l(REFS, HYPS) == pytest.approx(theirs_rouge, rel=1e-9)
    assert cider_d(REFS, HYPS) == pytest.approx(theirs_cider, rel=1e-9)
    assert 0.2 < theirs_bleu[3] < 0.9 and theirs_cider > 0.5       # a case that exercises the metrics


needs_java = pytest.mark.skipif(shutil.which("java") is None, reason="no java on PATH")


@needs_java
def test_tokenizer_matches_the_java_ptb_tokenizer():
    pytest.importorskip("pycocoevalcap")
    from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

    raw = {k: v + [RAW_HYPS[k]] for k, v in RAW_REFS.items()}
    raw[0] = ["The dogs' bowl is \"full\" [really].", "'Hello' said the man (twice); OK?",
              "A 3-year-old boy can't swim -- at all...", "Cats: two of them & a dog - or not."]
    theirs = PTBTokenizer().tokenize({k: [{"caption": c} for c in v] for k, v in raw.items()})
    for k, v in raw.items():
        assert [ptb_tokenize(c) for c in v] == theirs[k]


@needs_java
def test_meteor_runs_when_java_is_there():
    pytest.importorskip("pycocoevalcap")
    scores = caption_scores(RAW_REFS, RAW_HYPS)
    assert scores["skipped"] == [] and 0.1 < scores["METEOR"] < 1.0


def test_without_meteor_says_so():
    scores = caption_scores(RAW_REFS, RAW_HYPS, use_meteor=False)
    assert "METEOR" not in scores and scores["skipped"] == ["METEOR skipped: not asked for"]
    assert scores["BLEU-4"] == pytest.approx(bleu(REFS, HYPS)[3])
