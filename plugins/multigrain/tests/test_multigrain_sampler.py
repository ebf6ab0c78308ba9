"""The repeated-augmentation sampler's index pattern, alone and with 2 replicas."""

import pytest
from fusedembed_multigrain.sampler import RepeatedAugmentationSampler


def _batches(n, **kw):
    return list(RepeatedAugmentationSampler(n, **kw))


def test_copies_are_consecutive_and_the_epoch_is_twice_the_data():
    batches = _batches(20, batch_size=6, repeats=3, epoch_len_factor=2.0)
    assert len(batches) == 40 // 6 and all(len(b) == 6 for b in batches)
    flat = [i for b in batches for i in b]
    for k in range(0, len(flat), 3):
        assert flat[k] == flat[k + 1] == flat[k + 2]
    # a shuffled permutation: the first 20/3 groups are distinct images
    firsts = flat[0:18:3]
    assert len(set(firsts)) == len(firsts)


def test_m1_is_a_plain_shuffle_and_set_epoch_reshuffles():
    s = RepeatedAugmentationSampler(10, batch_size=5, repeats=1, epoch_len_factor=1.0)
    e0 = [i for b in s for i in b]
    assert sorted(e0) == list(range(10))
    s.set_epoch(1)
    assert [i for b in s for i in b] != e0


def test_two_replicas_keep_the_copies_on_one_rank():
    kw = dict(batch_size=12, repeats=3, epoch_len_factor=2.0, seed=3)
    r0 = _batches(30, num_replicas=2, rank=0, **kw)
    r1 = _batches(30, num_replicas=2, rank=1, **kw)
    assert len(r0) == len(r1) == 60 // 2 // 6
    for batches in (r0, r1):
        for b in batches:
            assert len(b) == 6
            assert all(b[k] == b[k + 1] == b[k + 2] for k in range(0, 6, 3))
    # the two ranks' step-t batches are consecutive blocks of one global stream
    single = [i for b in _batches(30, **{**kw, "batch_size": 6}) for i in b]
    interleaved = [i for t in range(len(r0)) for i in r0[t] + r1[t]]
    assert interleaved == single[:len(interleaved)]


def test_deit_spread_deals_copies_to_different_ranks():
    kw = dict(batch_size=4, repeats=3, epoch_len_factor=1.0, spread="deit", seed=1)
    r0 = [i for b in _batches(12, num_replicas=2, rank=0, **kw) for i in b]
    r1 = [i for b in _batches(12, num_replicas=2, rank=1, **kw) for i in b]
    stream = [i for b in _batches(12, **{**kw, "spread": "rank", "batch_size": 12}) for i in b]
    assert r0 == stream[0::2][:len(r0)] and r1 == stream[1::2][:len(r1)]
    assert r0[0] == r1[0] and r0[1] == r0[0]          # copies 1, 3 on rank 0 and copy 2 on rank 1


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match="multiple of repeats"):
        RepeatedAugmentationSampler(10, batch_size=8, repeats=3)
    with pytest.raises(ValueError, match="spread must be one of"):
        RepeatedAugmentationSampler(10, batch_size=6, spread="x")
    with pytest.raises(ValueError, match="rank must be in"):
        RepeatedAugmentationSampler(10, batch_size=6, num_replicas=2, rank=2)
