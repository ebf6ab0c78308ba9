import math

import pytest
import torch

from fusedembed.metrics import alignment_metrics


def test_hand_case():
    # Sentence 0 (5 words): truth 0 0 -1 1 1, assigned 0 0 0 1 0
    #   words: 4 grounded, 3 right; snippets [0 0 0] (right: its grounded 0, 0),
    #   [1] (right), [0] (wrong: truth 1) -> 2 of 3 precise.
    # Sentence 1 (3 of 4 words): truth 2 -1 2 | pad, assigned 1 1 1 | -1: 2 grounded, 0 right;
    #   one snippet [1 1 1], wrong.
    # Phrases (runs of one truth region): [0 0] recalled, [1 1] not (its second word is on 0),
    #   sentence 1's [2] and [2] (split by the ungrounded word) not -> 1 of 4.
    assignment = torch.tensor([[0, 0, 0, 1, 0], [1, 1, 1, -1, -1]])
    truth = torch.tensor([[0, 0, -1, 1, 1], [2, -1, 2, 5, -1]])
    out = alignment_metrics(assignment, truth, lengths=[5, 3])
    assert out == {"word_accuracy": pytest.approx(100 * 3 / 6),
                   "snippet_precision": pytest.approx(100 * 2 / 4),
                   "snippet_recall": pytest.approx(100 * 1 / 4),
                   "num_words": 6.0, "num_snippets": 4.0, "num_phrases": 4.0}


def test_groups_make_identical_objects_equivalent():
    # Objects 1 and 2 are identical (same group): words on object 2 assigned to 1 are right.
    assignment = torch.tensor([[1, 1, 0]])
    truth = torch.tensor([[2, 2, 0]])
    groups = torch.tensor([[0, 1, 1]])
    assert alignment_metrics(assignment, truth)["word_accuracy"] == pytest.approx(100 / 3)
    out = alignment_metrics(assignment, truth, groups=groups)
    assert out["word_accuracy"] == 100.0 and out["snippet_precision"] == 100.0


def test_empty_and_errors():
    out = alignment_metrics(torch.zeros(1, 3, dtype=torch.long), torch.full((1, 3), -1))
    assert math.isnan(out["word_accuracy"]) and out["num_words"] == 0
    with pytest.raises(ValueError, match="same \\(B, N\\) shape"):
        alignment_metrics(torch.zeros(1, 3), torch.zeros(1, 4))
    with pytest.raises(ValueError, match="lengths"):
        alignment_metrics(torch.zeros(1, 3), torch.zeros(1, 3), lengths=[4])
    with pytest.raises(ValueError, match="region index >= K=2"):
        alignment_metrics(torch.tensor([[3]]), torch.tensor([[0]]), groups=torch.tensor([[0, 1]]))
    # NaN read as a region (.long() made it a huge negative index: "no region", not scored).
    nan = float("nan")
    with pytest.raises(ValueError, match=r"truth must hold whole numbers, got nan at index \(0, 1\)"):
        alignment_metrics(torch.tensor([[0, 1]]), torch.tensor([[0.0, nan]]))
    with pytest.raises(ValueError, match="assignment must hold whole numbers, got 0.5"):
        alignment_metrics(torch.tensor([[0.0, 0.5]]), torch.tensor([[0, 1]]))
    with pytest.raises(ValueError, match="lengths must hold whole numbers"):
        alignment_metrics(torch.zeros(1, 3), torch.zeros(1, 3), lengths=[nan])


def test_snippet_recall_needs_the_whole_phrase_on_its_region():
    truth = torch.tensor([[0, 0, 0, -1, 1, 1]])
    whole = alignment_metrics(torch.tensor([[0, 0, 0, 0, 1, 1]]), truth)
    assert whole["snippet_recall"] == 100.0 and whole["num_phrases"] == 2.0
    # One word of the first phrase elsewhere: that phrase is not recalled, the other still is.
    part = alignment_metrics(torch.tensor([[0, 2, 0, 0, 1, 1]]), truth)
    assert part["snippet_recall"] == 50.0
    # Identical objects (one group) make a phrase over both one phrase.
    grouped = alignment_metrics(torch.tensor([[1, 1, 1]]), torch.tensor([[1, 2, 2]]),
                                groups=torch.tensor([[0, 1, 1]]))
    assert grouped["num_phrases"] == 1.0 and grouped["snippet_recall"] == 100.0
