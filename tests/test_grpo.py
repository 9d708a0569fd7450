"""GRPO math on hand-made numbers: advantages, log-prob alignment, clip / dual clip, KL, aggregation, gradients."""
import math

import pytest
import torch

import train_rl
from mmduet2 import grpo
from mmduet2.grpo import (Episode, GRPOConfig, constant_group_mask, group_advantages, ppo_loss,
                          token_logprobs)


# ---- advantages ---------------------------------------------------------------------------------------------

def test_unbiased_std_advantages_by_hand():
    r = torch.tensor([1.0, 2.0, 3.0, 6.0, 0.0, 0.0, 1.0, 1.0])
    # group 0: mean 3, deviations (-2, -1, 0, 3), unbiased var = 14 / 3
    # group 1: mean 0.5, deviations (-.5, -.5, .5, .5), unbiased var = 1 / 3
    s0, s1 = math.sqrt(14 / 3), math.sqrt(1 / 3)
    want = torch.tensor([-2 / s0, -1 / s0, 0.0, 3 / s0, -.5 / s1, -.5 / s1, .5 / s1, .5 / s1])
    torch.testing.assert_close(group_advantages(r, 4), want, atol=1e-5, rtol=0)
    # a biased std (divide by 4) would give 2 / sqrt(3.5) = 1.069 for the first; the unbiased one gives 0.926
    assert abs(group_advantages(r, 4)[0].item() + 2 / s0) < 1e-5
    torch.testing.assert_close(group_advantages(r, 4, normalize_std=False),
                               torch.tensor([-2.0, -1.0, 0.0, 3.0, -.5, -.5, .5, .5]))


def test_constant_group_gives_zero_not_nan():
    # 0.1 * 3 is not exactly representable; the mean may round, the advantage must still be exactly 0
    r = torch.tensor([0.3, 0.3, 0.3, 1.921875, 1.921875, 1.921875, 0.0, 1.0, 2.0])
    for norm in (True, False):
        a = group_advantages(r, 3, normalize_std=norm)
        assert torch.isfinite(a).all()
        assert (a[:6] == 0).all() and a[7] == 0 and a[8] > 0 > a[6]
    assert constant_group_mask(r, 3).tolist() == [True] * 6 + [False] * 3
    # in float64 the mean of three copies of 3.955739460901518 rounds; the advantage must still be exactly 0
    r64 = torch.tensor([3.955739460901518] * 3 + [0.0, 1.0, 2.0], dtype=torch.float64)
    assert (group_advantages(r64, 3)[:3] == 0).all() and group_advantages(r64, 3).dtype == torch.float64


def test_indivisible_or_singleton_groups_raise():
    with pytest.raises(ValueError, match="groups of 4"):
        group_advantages(torch.zeros(6), 4)
    with pytest.raises(ValueError, match="groups of 1"):
        group_advantages(torch.zeros(6), 1)
    with pytest.raises(ValueError, match="loss_agg"):
        GRPOConfig(loss_agg="mean")


def test_episode_checks_lengths():
    Episode("v0", 0, [1, 2, 3], [False, True, True], [(2.0, "NO REPLY")], reward=1.0)
    with pytest.raises(ValueError, match="same length"):
        Episode("v0", 0, [1, 2, 3], [False, True], [])


# ---- log-probs ----------------------------------------------------------------------------------------------

def test_token_logprobs_shift_and_temperature():
    # vocab 2; logits [0, ln 3] favour token 1 with p = 3/4 at T = 1 and sqrt(3) / (1 + sqrt(3)) at T = 2
    logits = torch.tensor([[[0.0, math.log(3)], [math.log(3), 0.0], [5.0, -5.0]]])  # (1, 3, 2)
    ids = torch.tensor([[0, 1, 1]])
    lp = token_logprobs(logits, ids, 1.0)
    # position 1 (token 1) is predicted by the logits at position 0; position 2 (token 1) by position 1
    torch.testing.assert_close(lp, torch.tensor([[0.0, math.log(3 / 4), math.log(1 / 4)]]))
    lp2 = token_logprobs(logits, ids, 2.0)
    s3 = math.sqrt(3)
    torch.testing.assert_close(lp2, torch.tensor([[0.0, math.log(s3 / (1 + s3)), math.log(1 / (1 + s3))]]))
    # logits at position 1 only (what `model(..., logits_to_keep=positions)` returns): token 2 alone gets its log-prob
    part = logits[:, [1]].clone().requires_grad_()
    lp3 = token_logprobs(part, ids, 1.0, positions=torch.tensor([1]))
    torch.testing.assert_close(lp3, torch.tensor([[0.0, 0.0, math.log(1 / 4)]]))
    lp3.sum().backward()
    torch.testing.assert_close(part.grad, torch.tensor([[[-0.75, 0.75]]]))  # d log softmax_1 / d logits = onehot - p


def test_token_logprobs_with_banned_ids_is_the_masked_distribution():
    torch.manual_seed(0)
    logits = torch.randn(2, 5, 7, requires_grad=True)
    ids = torch.tensor([[0, 1, 2, 3, 4], [6, 5, 4, 3, 2]])  # row 1 holds banned ids 3 and 5 at forced positions
    banned = torch.tensor([3, 5])
    masked = logits.detach().clone()
    masked[..., banned] = float("-inf")
    want = (masked[:, :-1] / 1.2).log_softmax(-1).gather(-1, ids[:, 1:, None])[..., 0]
    got = token_logprobs(logits, ids, 1.2, banned=banned)
    torch.testing.assert_close(got[:, 1:], want)
    assert got[0, 3] == float("-inf") and torch.isfinite(got[0, [1, 2, 4]]).all()
    # the default is unchanged, and a banned forced token (outside the loss mask) leaves the loss and grads finite
    torch.testing.assert_close(token_logprobs(logits, ids, 1.2)[:, 1:],
                               (logits.detach()[:, :-1] / 1.2).log_softmax(-1).gather(-1, ids[:, 1:, None])[..., 0])
    mask = torch.isfinite(got.detach()) & (torch.arange(5) > 0)
    loss, _ = ppo_loss(got, got.detach(), torch.tensor([1.0, -1.0]), mask, GRPOConfig(kl_coef=0.1), got.detach())
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(logits.grad).all() and logits.grad[..., banned].abs().sum() == 0


# ---- PPO loss -----------------------------------------------------------------------------------------------

def one_token_loss(ratio, adv, **cfg):
    """Loss of a single sampled token (position 1; position 0 is context) at the given ratio and advantage."""
    lp = torch.tensor([[0.0, math.log(ratio)]])
    mask = torch.tensor([[False, True]])
    return ppo_loss(lp, torch.zeros(1, 2), torch.tensor([adv]), mask, GRPOConfig(**cfg))


@pytest.mark.parametrize("ratio, adv, want, want_no_dual", [
    (1.5, 1.0, -1.2, -1.2),    # A > 0, r above 1 + eps: clipped at -1.2 A
    (0.5, 1.0, -0.5, -0.5),    # A > 0, r below 1 - eps: the unclipped -r A is the larger (pessimistic)
    (1.1, 1.0, -1.1, -1.1),    # inside the trust region
    (0.5, -1.0, 0.8, 0.8),     # A < 0, r below 1 - eps: clipped at -(1 - eps) A
    (1.5, -1.0, 1.5, 1.5),     # A < 0, r above 1 + eps: unclipped -r A (below c |A| = 3)
    (5.0, -1.0, 3.0, 5.0),     # A < 0, r > c: dual clip bounds the loss at -c A = 3
    (4.0, -2.0, 6.0, 8.0),     # -r A = 8 > -c A = 6
])
def test_clip_and_dual_clip(ratio, adv, want, want_no_dual):
    loss, stats = one_token_loss(ratio, adv)
    assert loss.item() == pytest.approx(want, abs=1e-5)
    assert one_token_loss(ratio, adv, dual_clip=None)[0].item() == pytest.approx(want_no_dual, abs=1e-5)
    assert stats["ratio_mean"] == pytest.approx(ratio, abs=1e-5)
    assert stats["dual_clip_frac"] == float(want != want_no_dual)


def test_clipped_token_has_no_gradient():
    for ratio, adv, has_grad in [(1.5, 1.0, False), (0.5, -1.0, False), (5.0, -1.0, False), (1.1, 1.0, True),
                                 (1.5, -1.0, True)]:
        lp = torch.tensor([[0.0, math.log(ratio)]], requires_grad=True)
        loss, stats = ppo_loss(lp, torch.zeros(1, 2), torch.tensor([adv]), torch.tensor([[False, True]]),
                               GRPOConfig())
        loss.backward()
        assert (lp.grad[0, 1].abs() > 1e-6) == has_grad, (ratio, adv)
        assert stats["clip_frac"] == float(ratio in (1.5, 0.5) and not has_grad)


def test_mask_excludes_tokens():
    # masked positions hold huge log-ratios (exp would overflow) and must change nothing
    lp = torch.tensor([[0.0, 0.0, 200.0, -300.0]])
    mask = torch.tensor([[False, True, False, False]])
    for agg in ("traj_token_mean", "token_mean"):
        loss, stats = ppo_loss(lp, torch.zeros(1, 4), torch.tensor([2.0]), mask, GRPOConfig(loss_agg=agg))
        assert loss.item() == pytest.approx(-2.0) and stats["ratio_mean"] == pytest.approx(1.0)
        assert stats["clip_frac"] == 0.0


def test_aggregation_modes_by_hand():
    # trajectory 0: one sampled token, A = 2; trajectory 1: three sampled tokens, A = -1; ratio 1 everywhere,
    # so each token's loss is -A: (-2) and (1, 1, 1). Position 0 and trajectory 0's padding are masked.
    lp = torch.zeros(2, 4)
    mask = torch.tensor([[False, True, False, False], [False, True, True, True]])
    adv = torch.tensor([2.0, -1.0])
    want = {"traj_token_mean": (-2 / 1 + 3 / 3) / 2,     # -0.5
            "token_mean": (-2 + 3) / 4,                   # 0.25
            "seq_sum": (-2 / 8 + 3 / 8) / 2}              # 0.0625 with a constant divisor of 8
    for agg, w in want.items():
        loss, _ = ppo_loss(lp, lp, adv, mask, GRPOConfig(loss_agg=agg, seq_sum_norm=8))
        assert loss.item() == pytest.approx(w), agg


def test_aggregation_with_unequal_ratios():
    # trajectory 0: ratios (1.1, 0.9) with A = 1 -> losses (-1.1, -0.9); trajectory 1: ratio 1.5 with A = -1 -> 1.5
    lp = torch.log(torch.tensor([[1.0, 1.1, 0.9], [1.0, 1.5, 1.0]]))
    mask = torch.tensor([[False, True, True], [False, True, False]])
    adv = torch.tensor([1.0, -1.0])
    loss, _ = ppo_loss(lp, torch.zeros(2, 3), adv, mask, GRPOConfig())
    assert loss.item() == pytest.approx(((-1.1 - 0.9) / 2 + 1.5) / 2, abs=1e-6)
    loss, _ = ppo_loss(lp, torch.zeros(2, 3), adv, mask, GRPOConfig(loss_agg="token_mean"))
    assert loss.item() == pytest.approx((-1.1 - 0.9 + 1.5) / 3, abs=1e-6)


def test_k3_kl_term():
    # logp = log 0.5, ref = log 0.25: q = -ln 2, k3 = exp(q) - q - 1 = 0.5 + ln 2 - 1
    lp = torch.tensor([[0.0, math.log(0.5)]])
    ref = torch.tensor([[0.0, math.log(0.25)]])
    mask = torch.tensor([[False, True]])
    k3 = 0.5 + math.log(2) - 1
    loss, stats = ppo_loss(lp, lp, torch.tensor([1.0]), mask, GRPOConfig(kl_coef=0.1), ref)
    assert stats["kl"] == pytest.approx(k3, abs=1e-6)
    assert loss.item() == pytest.approx(-1.0 + 0.1 * k3, abs=1e-6)
    loss, stats = ppo_loss(lp, lp, torch.tensor([1.0]), mask, GRPOConfig(), ref)  # kl_coef 0: ignored
    assert loss.item() == pytest.approx(-1.0) and stats["kl"] == 0.0
    with pytest.raises(ValueError, match="ref_logprobs"):
        ppo_loss(lp, lp, torch.tensor([1.0]), mask, GRPOConfig(kl_coef=0.1))


def test_on_policy_gradient_direction():
    # One on-policy step (old = current, detached): ratio 1, loss = -mean_i A_i, d loss / d logp_it = -A_i / (n_i B).
    torch.manual_seed(0)
    V, T = 5, 6
    ids = torch.randint(0, V, (2, T))
    mask = torch.tensor([[False, False, True, True, True, False], [False, True, True, False, False, False]])
    adv = torch.tensor([1.0, -1.0])
    logits = torch.nn.Parameter(torch.randn(2, T, V))
    cfg = GRPOConfig()
    lp = token_logprobs(logits, ids, 1.2)
    lp.retain_grad()
    loss, stats = ppo_loss(lp, lp.detach(), adv, mask, cfg)
    assert loss.item() == pytest.approx(-adv.mean().item()) and stats["ratio_mean"] == pytest.approx(1.0)
    loss.backward()
    want = -adv[:, None] * mask / (mask.sum(1, keepdim=True) * 2)
    torch.testing.assert_close(lp.grad, want)
    before = lp.detach()
    torch.optim.SGD([logits], lr=1.0).step()
    after = token_logprobs(logits, ids, 1.2).detach()
    assert (after[0][mask[0]] > before[0][mask[0]]).all()   # A > 0: sampled tokens become more likely
    assert (after[1][mask[1]] < before[1][mask[1]]).all()   # A < 0: less likely
    torch.testing.assert_close(after[~mask], before[~mask])  # unmasked positions get no gradient


def test_term_advantages_by_hand():
    """Each term normalised in its group, then averaged with the weights (an opt-in, not the paper's)."""
    comps = torch.tensor([[1.0, 0.0], [0.0, -1.0], [0.5, 0.0], [0.5, 0.0]])   # two groups of 2
    adv = train_rl.term_advantages(comps, [3.0, 2.0], group_size=2)
    a = 1 / (2 ** 0.5 + 1e-6)                      # (x - mean) / (unbiased std + eps) for a pair 1 apart
    torch.testing.assert_close(adv, torch.tensor([a, -a, 0.0, 0.0]), atol=1e-6, rtol=0)
    # one term only: the paper's group advantage of that term
    torch.testing.assert_close(train_rl.term_advantages(comps[:, :1], [3.0], 2), grpo.group_advantages(comps[:, 0], 2))
    # terms that disagree cancel by their weights: r_pauc up by 1, r_rep down by 1 in the same rollout
    adv = train_rl.term_advantages(torch.tensor([[1.0, -1.0], [0.0, 0.0]]), [3.0, 2.0], 2)
    torch.testing.assert_close(adv, torch.tensor([a / 5, -a / 5]), atol=1e-6, rtol=0)


def test_turn_advantages_by_hand():
    """Per-turn credit (an opt-in, not the paper's): runs of sampled tokens are the turns."""
    adv = train_rl.turn_advantages(torch.tensor([0.5, -1.0]), [[False, True, True, False, True], [True, False, True]],
                               [[0.0, -1.0], [-1.0, 0.0]], credit=1.0)
    torch.testing.assert_close(adv, torch.tensor([[0.5, 0.5, 0.5, 0.5, -0.5], [-2.0, -1.0, -1.0, 0.0, 0.0]]))
    # per-token advantages go through the PPO loss like per-trajectory ones
    mask = torch.tensor([[False, True, True, False, True]])
    lp = torch.zeros(1, 5, requires_grad=True)
    loss, _ = ppo_loss(lp, lp.detach(), adv[:1], mask, GRPOConfig())
    loss.backward()
    torch.testing.assert_close(lp.grad, torch.tensor([[0.0, -0.5, -0.5, 0.0, 0.5]]) / 3)


def test_decision_centred_advantages_by_hand():
    """Each turn's first sampled token is its decision (7 = the first token of NO REPLY); decisions of a class
    lose their class mean, every other token keeps its trajectory's advantage."""
    masks = [[False, True, True, False, True, True], [False, True, True, False, True]]
    ids = [[0, 7, 1, 0, 4, 5], [0, 7, 1, 0, 7]]            # row 0: silent, then a reply; row 1: silent twice
    adv = train_rl.decision_centred_advantages(torch.tensor([1.0, -0.5]), ids, masks, silent_id=7)
    # silent decisions (0, 1), (1, 1), (1, 4): advantages 1, -0.5, -0.5, mean 0; the one reply decision (0, 4): 1 -> 0
    torch.testing.assert_close(adv, torch.tensor([[1.0, 1.0, 1.0, 1.0, 0.0, 1.0], [-0.5, -0.5, -0.5, -0.5, -0.5, 0.0]]))
    silent = torch.tensor([adv[0, 1], adv[1, 1], adv[1, 4]])
    assert abs(float(silent.sum())) < 1e-6  # no push on a class as a whole
    # without any decision of a class to share it with, a reply decision's advantage is centred to zero
    one = train_rl.decision_centred_advantages(torch.tensor([2.0]), [[0, 3, 3]], [[False, True, True]], silent_id=7)
    torch.testing.assert_close(one, torch.tensor([[2.0, 0.0, 2.0]]))


@pytest.mark.parametrize("agg", grpo.LOSS_AGGS)
def test_micro_batch_weights_add_up_to_the_batch_loss(agg):
    """Trajectories with 2, 6 and 4 sampled tokens, updated as micro-batches [0, 1] and [2]."""
    torch.manual_seed(0)
    mask = torch.zeros(3, 8, dtype=torch.bool)
    for i, n in enumerate((2, 6, 4)):
        mask[i, 1:1 + n] = True
    lp, old, adv = torch.randn(3, 8), torch.randn(3, 8) * 0.1, torch.tensor([1.0, -0.5, 2.0])
    cfg = GRPOConfig(loss_agg=agg, seq_sum_norm=8)
    weights = [grpo.micro_batch_weight(mask[part], 3, 12, cfg) for part in ([0, 1], [2])]
    assert weights == pytest.approx([8 / 12, 4 / 12] if agg == "token_mean" else [2 / 3, 1 / 3])
    whole, _ = ppo_loss(lp, old, adv, mask, cfg)
    parts = sum(w * ppo_loss(lp[part], old[part], adv[part], mask[part], cfg)[0]
                for w, part in zip(weights, ([0, 1], [2])))
    torch.testing.assert_close(parts, whole)
