"""The multimodal RNN against its formula, and its decoders."""

import math

import pytest
import torch
from fusedembed_alignment.generator.decode import beam_search, greedy
from fusedembed_alignment.generator.model import CaptionNLL, MultimodalRNN, drop_unknown

CNN = {"name": "tiny_cnn", "width": 4, "depth": 2}


def make(cell="rnn", image_input="first", vocab_size=12, hidden=16, seed=0, **kw):
    torch.manual_seed(seed)
    return MultimodalRNN(CNN, vocab_size=vocab_size, hidden=hidden, word_dim=8, cell=cell,
                         image_input=image_input, dropout=0.0, **kw).eval()


@pytest.mark.parametrize("image_input", ["first", "every"])
def test_rnn_step_is_eq_14(image_input):
    m = make(image_input=image_input)
    images = torch.rand(3, 3, 16, 16)
    tokens = torch.tensor([[4, 5, 6], [7, 8, 0], [9, 0, 0]])
    out = m({"image": images, "tokens": tokens, "lengths": torch.tensor([3, 2, 1])})
    # The formula by hand: b_v = W_hi CNN(I); h_t = relu(W_hx x_t + W_hh h_{t-1} + b_h + 1(t=1) b_v).
    W_hi, b_hi = m.image_proj.weight, m.image_proj.bias
    b_v = m.cnn(images) @ W_hi.T + b_hi
    x = m.embed(torch.cat([torch.zeros(3, 1, dtype=torch.long), tokens], 1))
    h = torch.zeros(3, 16)
    for t in range(4):
        pre = x[:, t] @ m.W_hx.weight.T + m.W_hx.bias + h @ m.W_hh.weight.T
        if t == 0 or image_input == "every":
            pre = pre + b_v
        h = torch.clamp(pre, min=0)
        y = h @ m.W_oh.weight.T + m.W_oh.bias
        torch.testing.assert_close(out["caption_logits"][:, t], y)
    # Targets: the words, then END (0), then nothing (-100).
    assert out["caption_targets"].tolist() == [[4, 5, 6, 0], [7, 8, 0, -100], [9, 0, -100, -100]]


def test_image_enters_once_unless_every():
    images = torch.rand(2, 3, 16, 16)
    batch = {"image": images, "tokens": torch.tensor([[4, 5, 6, 7]] * 2), "lengths": torch.tensor([4, 4])}
    for image_input, differs_later in (("first", False), ("every", True)):
        m = make(image_input=image_input)
        with torch.no_grad():
            m.W_hh.weight.zero_()             # no memory: a step sees the image only if it is fed
        logits = m(batch)["caption_logits"]
        assert not torch.allclose(logits[0, 0], logits[1, 0])
        assert torch.allclose(logits[0, 2], logits[1, 2]) != differs_later


def test_unknown_words_are_dropped_not_fed():
    tokens = torch.tensor([[4, 1, 5, 0], [1, 1, 0, 0]])
    moved, lengths = drop_unknown(tokens, torch.tensor([3, 2]))
    assert moved.tolist() == [[4, 5], [0, 0]] and lengths.tolist() == [2, 0]


def test_lstm_reads_image_first():
    m = make(cell="lstm")
    out = m({"image": torch.rand(2, 3, 16, 16), "tokens": torch.tensor([[4, 5], [6, 0]]),
             "lengths": torch.tensor([2, 1])})
    assert out["caption_logits"].shape == (2, 3, 12)
    with pytest.raises(ValueError, match="image_input must be 'first', got 'every'"):
        make(cell="lstm", image_input="every")


def test_loss_is_sentence_sum_over_batch():
    logits = torch.randn(2, 3, 5)
    targets = torch.tensor([[1, 2, 0], [3, 0, -100]])
    lp = logits.log_softmax(-1)
    by_hand = -(lp[0, 0, 1] + lp[0, 1, 2] + lp[0, 2, 0] + lp[1, 0, 3] + lp[1, 1, 0]) / 2
    torch.testing.assert_close(CaptionNLL()(logits, targets), by_hand)
    torch.testing.assert_close(CaptionNLL(per_word=True)(logits, targets), by_hand * 2 / 5)


@pytest.mark.parametrize("cell", ["rnn", "lstm"])
def test_beam_1_is_greedy(cell):
    m = make(cell=cell, vocab_size=30, hidden=32)
    images = torch.rand(8, 3, 16, 16)
    g = greedy(m, images, max_len=12)
    b = beam_search(m, images, beam_size=1, max_len=12, with_greedy=False)
    assert torch.equal(g[0], b[0]) and torch.equal(g[1], b[1])
    torch.testing.assert_close(g[2], b[2])


def sentence_log_prob(m, images, ids, lengths):
    """log p(words, END) by teacher forcing the model's own forward pass."""
    out = m({"image": images, "tokens": ids, "lengths": lengths})
    lp = out["caption_logits"].log_softmax(-1)
    t = out["caption_targets"]
    ended = lengths < ids.shape[1]              # cut at max_len: no END term
    t = torch.where((torch.arange(t.shape[1]) == lengths[:, None]) & ~ended[:, None], -100, t)
    return lp.gather(2, t.clamp(min=0)[..., None])[..., 0].masked_fill(t == -100, 0).sum(1)


@pytest.mark.parametrize("cell", ["rnn", "lstm"])
def test_beam_never_below_greedy(cell):
    # The beam alone may prune the greedy path (an LSTM seed here does: -22.10 vs -21.99); the
    # returned sentence, greedy's being a final candidate, never is worse.
    worse = better = 0
    for seed in range(4):
        m = make(cell=cell, vocab_size=20, hidden=24, seed=seed)
        with torch.no_grad():
            m.W_oh.weight.mul_(30)          # peaked, varied distributions: beam and greedy disagree
        images = torch.rand(32, 3, 16, 16)
        g_ids, g_len, g_score = greedy(m, images, max_len=8)
        for k in (2, 3, 5):
            b_ids, b_len, b_score = beam_search(m, images, beam_size=k, max_len=8)
            worse += int((b_score < g_score - 1e-4).sum())
            better += int((b_score > g_score + 1e-4).sum())
            # The scores are the sentences' log-probabilities under the model.
            torch.testing.assert_close(b_score, sentence_log_prob(m, images, b_ids, b_len), atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(g_score, sentence_log_prob(m, images, g_ids, g_len), atol=1e-4, rtol=1e-4)
    assert worse == 0 and better > 0          # and the beam does find better sentences


def test_beam_is_deterministic_and_batch_independent():
    m = make(vocab_size=20, hidden=24)
    images = torch.rand(6, 3, 16, 16)
    a = beam_search(m, images, beam_size=3, max_len=10)
    b = beam_search(m, images, beam_size=3, max_len=10)
    one = beam_search(m, images[2:3], beam_size=3, max_len=10)
    assert torch.equal(a[0], b[0]) and torch.equal(a[0][2:3], one[0])


class MarkovChain:
    """A stand-in model for the decoders: the next word's distribution depends on the last word
    only, ``table[prev]`` (row 0 after START), so the best sentences can be worked out by hand."""

    def __init__(self, table):
        self.logp = torch.tensor(table).clamp(min=1e-12).log()
        self.vocab_size = len(table)

    def image_vector(self, images):
        return images.new_zeros(len(images), 1)

    def start(self, b_v):
        return b_v

    def embed(self, prev):
        return prev

    def step(self, x, state, b_v, first):
        return state, x

    def logits(self, prev):
        return self.logp[prev]


# ids: 0 END (and START), 1 <unk>, 2 "a", 3 "b", 4 "c"
CHAIN = MarkovChain([[0.4, 0, 0.6, 0, 0],       # after START: END .4, a .6
                     [1, 0, 0, 0, 0],
                     [0.5, 0, 0, 0.5, 0],       # after a: END .5, b .5
                     [0.9, 0, 0, 0, 0.1],       # after b: END .9, c .1
                     [1, 0, 0, 0, 0]])          # after c: END


def test_decoders_on_a_chain_worked_out_by_hand():
    images = torch.zeros(2, 3, 4, 4)
    ids, lengths, score = greedy(CHAIN, images, max_len=6)
    # greedy: a (.6), then END and b tie at .5 -> the lower id, END: "a", log .6 + log .5
    assert ids[0, :2].tolist() == [2, 0] and lengths.tolist() == [1, 1]
    torch.testing.assert_close(score, torch.full((2,), math.log(0.6 * 0.5)))
    # beam: the empty sentence is the most probable (.4 > .3 > .27)
    ids, lengths, score = beam_search(CHAIN, images, beam_size=3, max_len=6)
    assert lengths.tolist() == [0, 0]
    torch.testing.assert_close(score, torch.full((2,), math.log(0.4)))
    # per-step log-probability: "" -0.92/1, "a" -1.20/2, "a b" -1.31/3 (best), "a b c" -3.51/4
    ids, lengths, score = beam_search(CHAIN, images, beam_size=3, max_len=6, length_norm=1.0)
    assert ids[0, :3].tolist() == [2, 3, 0] and lengths.tolist() == [2, 2]
    torch.testing.assert_close(score, torch.full((2,), math.log(0.6 * 0.5 * 0.9)))
    # cut at max_len = 1: no END term
    ids, lengths, score = beam_search(CHAIN, images, beam_size=2, max_len=1, length_norm=1.0)
    assert lengths.tolist() == [1, 1]
    torch.testing.assert_close(score, torch.full((2,), math.log(0.6)))


def test_errors_name_the_argument():
    with pytest.raises(ValueError, match="exactly one of vocab_size and vocab_path"):
        MultimodalRNN(CNN)
    m = make()
    with pytest.raises(ValueError, match=r"beam_size must be in \[1, vocab_size - 2 = 10\], got 11"):
        beam_search(m, torch.rand(1, 3, 16, 16), beam_size=11)
    with pytest.raises(ValueError, match="token id 12 is outside vocab_size 12"):
        m({"image": torch.rand(1, 3, 16, 16), "tokens": torch.tensor([[12]])})
