"""The two weighting rules against hand-computed counter sequences, and the loss module around
them (formula, state, resume, eval mode, errors, DDP = one process)."""

import math
import re

import pytest
import torch
from fusedembed_mlimages.loss import SampledWeightedSigmoidLoss
from fusedembed_mlimages.rules import PaperRule, ReleasedCodeRule

import fusedembed
from fusedembed.ops import sampled_sigmoid_loss

pytestmark = pytest.mark.skipif(not fusedembed.has_extension(), reason="fusedembed._C not built")

LOG2 = math.log(2.0)
P, N = True, False

# Three classes over four batches; per batch, each class has a positive (P) or none (N).
STATES = [[P, N, P], [P, N, N], [N, N, P], [N, P, P]]
# paper: run lengths (1,1,1) (2,2,1) (1,3,1) (2,1,2) -> weights 0.9^(t-1)
PAPER_WEIGHTS = [[1.0, 1.0, 1.0], [0.9, 0.9, 1.0], [1.0, 0.81, 1.0], [0.9, 1.0, 0.9]]
# code, every class without a positive selected: w(t) = max(1 - log10(t + 0.01), 0.01),
# g(n) = 1 - log10(8 + n) if > 0.01 else 0.001
W1, W2, G1 = 1 - math.log10(1.01), 1 - math.log10(2.01), 1 - math.log10(9)
CODE_WEIGHTS = [[W1, G1, W1], [W2, 0.001, G1], [G1, 0.001, W1], [0.001, W1, W2]]


def applied(rule, has_pos):
    """The weight each class gets in a batch with these states."""
    w = rule.candidate_weights()
    return torch.where(torch.tensor(has_pos), w[0], w[1]).tolist()


def test_paper_rule_hand_sequence():
    rule = PaperRule(3)
    runs, lasts = [], []
    for has_pos, want in zip(STATES, PAPER_WEIGHTS):
        assert applied(rule, has_pos) == pytest.approx(want)
        rule.update(torch.tensor(has_pos), torch.ones(3, dtype=torch.bool))
        runs.append(rule.run_length.tolist())
        lasts.append(rule.last_state.tolist())
    assert runs == [[1, 1, 1], [2, 2, 1], [1, 3, 1], [2, 1, 2]]
    assert lasts == [[1, 0, 1], [1, 0, 0], [0, 0, 1], [0, 1, 1]]
    assert rule.sampling == {"neg_ratio": 5.0, "empty_keep": 0.1}


def test_paper_rule_decays_a_long_run_whatever_the_state():
    rule = PaperRule(2, decay=0.5)
    got = []
    for _ in range(4):
        got.append(applied(rule, [P, N]))
        rule.update(torch.tensor([P, N]), torch.tensor([True, False]))
    assert got == [[1.0, 1.0], [0.5, 0.5], [0.25, 0.25], [0.125, 0.125]]


def test_code_rule_hand_sequence_every_empty_class_selected():
    rule = ReleasedCodeRule(3, neg_select=1.0)
    pos, neg = [], []
    for has_pos, want in zip(STATES, CODE_WEIGHTS):
        assert applied(rule, has_pos) == pytest.approx(want)
        rule.update(torch.tensor(has_pos), torch.ones(3, dtype=torch.bool))
        pos.append(rule.pos_count.tolist())
        neg.append(rule.neg_count.tolist())
    assert pos == [[1, 0, 1], [2, 0, 0], [0, 0, 1], [0, 1, 2]]
    assert neg == [[0, 1, 0], [0, 2, 1], [1, 3, 0], [2, 0, 0]]
    assert rule.sampling == {"neg_ratio": None, "empty_keep": 1.0}


def test_code_rule_counts_only_selected_empty_classes_and_floors_the_run_weight():
    rule = ReleasedCodeRule(2)
    assert rule.neg_select == 0.1                               # train.sh
    # class 0 positive 11 times in a row; class 1 empty, selected on batches 2 and 5 only
    weights, negs = [], []
    for step in range(11):
        weights.append(applied(rule, [P, N])[0])
        rule.update(torch.tensor([P, N]), torch.tensor([True, step in (1, 4)]))
        negs.append(int(rule.neg_count[1]))
    # 1 - log10(t + 0.01) for t = 1..9, then the 0.01 floor (reached at t = 10)
    assert weights == pytest.approx([0.99568, 0.69680, 0.52143, 0.39686, 0.30016, 0.22112, 0.15428, 0.09637,
                                     0.04527, 0.01, 0.01], abs=5e-5)
    assert negs == [0, 1, 1, 1, 2, 2, 2, 2, 2, 2, 2]
    assert rule.candidate_weights()[1, 1].item() == pytest.approx(0.001)     # g(3) = 1 - log10(11) < 0.01
    rule.update(torch.tensor([N, P]), torch.tensor([False, True]))           # a positive resets neg_count
    assert rule.pos_count.tolist() == [0, 1] and rule.neg_count.tolist() == [0, 0]


# With zero logits CE = log 2 * (12 y + 1 - y) per non-ignored entry; column sums in units of log 2:
HAND_TARGETS = [
    [[1.0, 0.0, 0.9], [0.0, 0.5, 0.0]],
    [[0.8, 0.0, 0.0], [0.0, -1.0, 0.3]],
    [[0.0, 0.0, 0.0], [0.0, 0.0, 1.0]],
    [[0.0, 0.7, 0.8], [-1.0, 0.0, 0.0]],
]
HAND_COLUMN_CE = [[13.0, 7.5, 11.9], [10.8, 1.0, 5.3], [2.0, 2.0, 13.0], [1.0, 9.7, 10.8]]


@pytest.mark.parametrize("mode", ["paper", "code"])
def test_module_loss_hand_computed(mode):
    """The targets above have the states of STATES (positive: y >= 0.7); nothing is dropped."""
    kw = dict(neg_ratio=1e6, empty_keep=1.0) if mode == "paper" else dict(neg_select=1.0)
    loss_fn = SampledWeightedSigmoidLoss(3, mode, seed=0, **kw)
    expected_w = PAPER_WEIGHTS if mode == "paper" else CODE_WEIGHTS
    for step, (y, col_ce, w) in enumerate(zip(HAND_TARGETS, HAND_COLUMN_CE, expected_w)):
        loss = loss_fn(torch.zeros(2, 3), torch.tensor(y))
        expected = LOG2 * sum(wj * cj for wj, cj in zip(w, col_ce)) / 2          # sum over classes, mean over B
        assert loss.item() == pytest.approx(expected, rel=1e-5), f"step {step + 1}"
    assert loss_fn.step == 4
    per_class = SampledWeightedSigmoidLoss(3, mode, seed=0, reduction="mean_classes", **kw)
    assert per_class(torch.zeros(2, 3), torch.tensor(HAND_TARGETS[0])).item() == pytest.approx(
        LOG2 * sum(wj * cj for wj, cj in zip(expected_w[0], HAND_COLUMN_CE[0])) / 6, rel=1e-5)


def test_module_code_mode_counts_the_columns_the_op_kept():
    torch.manual_seed(0)
    C = 50
    loss_fn = SampledWeightedSigmoidLoss(C, "code", neg_select=0.3, seed=1234)
    gen = torch.Generator().manual_seed(1234)  # the module's stream, replayed
    neg = torch.zeros(C, dtype=torch.int64)
    for step in range(6):
        z, targets = torch.randn(8, C), (torch.rand(8, C) < 0.02).float()
        loss_fn(z, targets)
        seed = int(torch.randint(0, 2**63 - 1, (), generator=gen, dtype=torch.int64))
        _, counts, kept = sampled_sigmoid_loss(z, targets, torch.ones(C), neg_ratio=None, empty_keep=0.3, seed=seed,
                                               offset=step, return_stats=True)
        has_pos = counts[0] > 0
        neg = torch.where(has_pos, 0, neg + (kept & ~has_pos).long())
    assert torch.equal(loss_fn.rule.neg_count, neg)
    assert 0 < neg.sum() < 6 * C  # some columns were selected, not all


def test_module_state_dict_resumes_exactly(tmp_path):
    torch.manual_seed(1)
    batches = [(torch.randn(16, 30), (torch.rand(16, 30) < 0.05).float()) for _ in range(5)]
    a = SampledWeightedSigmoidLoss(30, "paper", seed=7)
    for z, y in batches[:3]:
        a(z, y)
    torch.save(a.state_dict(), tmp_path / "loss.pt")
    b = SampledWeightedSigmoidLoss(30, "paper", seed=999)
    b.load_state_dict(torch.load(tmp_path / "loss.pt", weights_only=True))
    assert set(a.state_dict()) == {"rule.run_length", "rule.last_state", "_extra_state"}
    for z, y in batches[3:]:
        assert torch.equal(a(z, y), b(z, y))
    assert torch.equal(a.rule.run_length, b.rule.run_length) and a.step == b.step == 5


def test_module_eval_mode_is_frozen_and_deterministic():
    loss_fn = SampledWeightedSigmoidLoss(10, "code", seed=3)
    z, y = torch.randn(8, 10), (torch.rand(8, 10) < 0.2).float()
    loss_fn(z, y)
    state = {k: v.clone() for k, v in loss_fn.state_dict().items() if k != "_extra_state"}
    loss_fn.eval()
    first, second = loss_fn(z, y), loss_fn(z, y)
    assert torch.equal(first, second) and loss_fn.step == 1
    for k, v in state.items():
        assert torch.equal(loss_fn.state_dict()[k], v)


def test_module_gradient_flows_and_per_class_pos_weight():
    loss_fn = SampledWeightedSigmoidLoss(6, "code", seed=0, pos_weight=torch.arange(6.0))
    z = torch.randn(4, 6, requires_grad=True)
    loss_fn(z, (torch.rand(4, 6) < 0.3).float()).backward()
    assert z.grad is not None and torch.isfinite(z.grad).all()


def test_one_parameter_set_and_keywords_of_the_other_mode_are_errors():
    with pytest.raises(ValueError, match="neg_select belongs to mode 'code', not 'paper'"):
        SampledWeightedSigmoidLoss(6, "paper", neg_select=0.1)
    with pytest.raises(ValueError, match=r"decay, neg_ratio belong to mode 'paper', not 'code' .*takes: neg_select"):
        SampledWeightedSigmoidLoss(6, "code", decay=0.9, neg_ratio=5.0)
    with pytest.raises(ValueError, match="mode must be 'paper' or 'code', got 'tf'"):
        SampledWeightedSigmoidLoss(6, "tf")
    with pytest.raises(ValueError, match=re.escape("logits must be (B, 6), got (4, 5)")):
        SampledWeightedSigmoidLoss(6, "code", seed=0)(torch.zeros(4, 5), torch.zeros(4, 5))
    for kwargs, message in [(dict(neg_select=2.0), r"ReleasedCodeRule: neg_select must be in \[0, 1\], got 2.0"),
                            (dict(mode="paper", decay=0.0), r"PaperRule: decay must be in \(0, 1\]"),
                            (dict(mode="paper", neg_ratio=-1.0), r"neg_ratio must be in \(0, inf\)"),
                            (dict(pos_threshold=0.0), r"pos_threshold must be in \(0, 1\]"),
                            (dict(pos_weight=-1.0), r"pos_weight must be in \[0, inf\)"),
                            (dict(reduction="sum"), "reduction must be 'mean' or 'mean_classes'"),
                            (dict(seed=-1), r"seed must be an int in \[0, 2\^63\)")]:
        kwargs.setdefault("mode", "code")
        with pytest.raises((ValueError, TypeError), match=message):
            SampledWeightedSigmoidLoss(6, **kwargs)
    with pytest.raises(TypeError, match="neg_select must be a number, got str"):
        ReleasedCodeRule(3, neg_select="0.1")


@pytest.mark.cuda
def test_cuda_module_matches_cpu_module():
    g = torch.Generator().manual_seed(0)
    cpu_fn = SampledWeightedSigmoidLoss(300, "paper", seed=11)
    gpu_fn = SampledWeightedSigmoidLoss(300, "paper", seed=11).cuda()
    for _ in range(3):
        z, y = torch.randn(64, 300, generator=g) * 3, (torch.rand(64, 300, generator=g) < 0.02).float()
        torch.testing.assert_close(gpu_fn(z.cuda(), y.cuda()).cpu(), cpu_fn(z, y), rtol=1e-4, atol=1e-5)
    assert torch.equal(gpu_fn.rule.run_length.cpu(), cpu_fn.rule.run_length)


# --- class state under torch.distributed (gloo, two processes) ------------------------------

def _ddp_batches(steps=3, B=6, C=40):
    g = torch.Generator().manual_seed(42)
    return [(torch.randn(2 * B, C, generator=g), (torch.rand(2 * B, C, generator=g) < 0.04).float())
            for _ in range(steps)]


MODE_KW = {"paper": dict(neg_ratio=1.0, empty_keep=0.5), "code": dict(neg_select=0.5)}


def _ddp_worker(rank, world, init_file, out_dir):
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        out = {}
        for mode, kw in MODE_KW.items():
            # Different seeds on purpose: the module must take rank 0's stream.
            loss_fn = SampledWeightedSigmoidLoss(40, mode, seed=100 + rank, **kw)
            losses = []
            for z, y in _ddp_batches():
                B = z.shape[0] // world
                losses.append(loss_fn(z[rank * B:(rank + 1) * B], y[rank * B:(rank + 1) * B]))
            out |= {f"{mode}.losses": torch.stack(losses),
                    **{f"{mode}.{k}": v for k, v in loss_fn.state_dict().items() if k.startswith("rule.")}}
        torch.save(out, f"{out_dir}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()


@pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed not available")
def test_class_state_is_global_under_ddp(tmp_path):
    """Two gloo processes, each with half of every batch, end with the counters (and the mean
    loss) of one process that sees the whole batch, in both modes."""
    import torch.multiprocessing as mp

    mp.spawn(_ddp_worker, args=(2, str(tmp_path / "init"), str(tmp_path)), nprocs=2, join=True)
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(2)]
    for mode, kw in MODE_KW.items():
        single = SampledWeightedSigmoidLoss(40, mode, seed=100, **kw)
        expected = torch.stack([single(z, y) for z, y in _ddp_batches()])
        # Each rank's mean over its half; their average is the mean over the whole batch.
        torch.testing.assert_close((ranks[0][f"{mode}.losses"] + ranks[1][f"{mode}.losses"]) / 2, expected)
        for r in ranks:
            for k, v in single.state_dict().items():
                if k.startswith("rule."):
                    assert torch.equal(r[f"{mode}.{k}"], v), (mode, k)
