"""Multi-turn GRPO as pure functions over a typed episode record (docs/method.md section 3.2).

rollout -> `Episode` (one trajectory, one scalar reward) -> `group_advantages` -> `token_logprobs` -> `ppo_loss`.
The paper's choices are the defaults (of the functions and of `GRPOConfig`, the loss's settings):
  A_i = (R_i - mean_group R) / (std_group R + 1e-6), unbiased std, the same A on every sampled token of
  trajectory i (replies, `NO REPLY` and their <|im_end|>); PPO clip with eps 0.2 on both sides and dual clip
  c = 3 for negative advantages; token mean within each trajectory, then mean over trajectories; log-probs
  from logits / 1.2 (the sampling temperature, train_rl.py's --temperature); no KL, no reference model, no
  entropy bonus.
Each contested choice is a switch: `normalize_std=False` is Dr.GRPO's mean-centring, `constant_group_mask`
finds the groups that carry no signal (train_rl.py's --skip-constant-groups drops them), `kl_coef > 0` adds a
k3 KL to a frozen reference, and `loss_agg` picks the aggregation (`ppo_loss`). A batch too big for one forward
is split into micro-batches whose losses, weighted by `micro_batch_weight`, add up to the loss of the whole batch.
Credit schemes that are not the paper's (per-term, per-turn, centred decisions) are opt-in switches of train_rl.py.
A group whose rewards are all equal gets advantage exactly 0 (the formula's value in exact arithmetic; a
rounded float64 mean would otherwise leave values around 1e-10 instead).
"""
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

LOSS_AGGS = ("traj_token_mean", "token_mean", "seq_sum")


@dataclass
class Episode:
    """One trajectory of a group: the whole token sequence and which of its tokens the policy sampled."""
    prompt_id: str
    group: int                    # index within the group of rollouts of this prompt
    input_ids: list               # context + every turn's user chunk and assistant reply
    sampled_mask: list            # True for sampled tokens (reply tokens and their <|im_end|>), False otherwise
    turns: list                   # the played turns as (time, text)
    reward: float = 0.0
    components: dict = field(default_factory=dict)  # reward terms, for logging
    pixel_values: torch.Tensor = None    # the trajectory's frames, re-fed when log-probs are recomputed
    image_grid_thw: torch.Tensor = None
    answers: list = field(default_factory=list)     # gold answers of the window, for logging
    turn_penalties: list = None         # per played turn, for the opt-in per-turn credit (train_rl.py)

    def __post_init__(self):
        if len(self.input_ids) != len(self.sampled_mask):
            raise ValueError(f"Episode {self.prompt_id}/{self.group}: input_ids ({len(self.input_ids)}) and "
                             f"sampled_mask ({len(self.sampled_mask)}) must have the same length.")


@dataclass
class GRPOConfig:
    """The settings of `ppo_loss` (and `micro_batch_weight`)."""
    clip_eps: float = 0.2               # PPO ratio clip [1 - eps, 1 + eps]
    dual_clip: float = 3.0              # c of the dual clip for A < 0 (Ye et al. 2020); None disables it
    kl_coef: float = 0.0                # weight of the k3 KL to a frozen reference (0: no reference model)
    loss_agg: str = "traj_token_mean"   # traj_token_mean (paper) | token_mean | seq_sum (Dr.GRPO)
    seq_sum_norm: float = 1024.0        # the constant divisor of "seq_sum" (a maximum trajectory length)

    def __post_init__(self):
        if self.loss_agg not in LOSS_AGGS:
            raise ValueError(f"GRPOConfig.loss_agg={self.loss_agg!r} is unknown; use one of {LOSS_AGGS}.")
        if self.dual_clip is not None and self.dual_clip <= 1.0:
            raise ValueError(f"GRPOConfig.dual_clip={self.dual_clip} must be > 1 (or None to disable it).")


def _groups(rewards, group_size):
    n = rewards.shape[0]
    if group_size < 2 or n % group_size:
        raise ValueError(f"{n} rewards cannot be split into groups of {group_size}: group_size must be >= 2 "
                         "and divide the number of trajectories (check prompts_per_step * group_size).")
    return rewards.double().view(n // group_size, group_size)  # (n_groups, G)


def constant_group_mask(rewards, group_size):
    """(N,) bool: True for every trajectory whose group's rewards are all equal (no learning signal)."""
    g = _groups(rewards, group_size)
    return (g.max(1).values == g.min(1).values).repeat_interleave(group_size)


def group_advantages(rewards, group_size, normalize_std=True, eps=1e-6):
    """A_i = (R_i - mean_g R) / (std_g R + eps) with the unbiased std (N - 1); mean-centring only if not
    normalize_std. Rewards are laid out group by group: [g0 r0..r(G-1), g1 r0.., ...]. Returns (N,) float."""
    g = _groups(rewards, group_size)
    adv = g - g.mean(1, keepdim=True)
    if normalize_std:
        adv = adv / (g.std(1, keepdim=True, unbiased=True) + eps)
    adv = adv.view(-1).masked_fill(constant_group_mask(rewards, group_size), 0.0)
    return adv.to(rewards.dtype if rewards.is_floating_point() else torch.float32)


def token_logprobs(logits, input_ids, temperature=1.0, positions=None, banned=None):
    """log p(input_ids[:, t] | input_ids[:, :t]) under softmax(logits / temperature), aligned with input_ids.

    The logit at position t predicts token t + 1, so out[:, t] = log_softmax(logits[:, t - 1] / T)[input_ids[:, t]]
    for t >= 1, and out[:, 0] = 0 (the first token has no prediction; it is never sampled, so keep it masked).
    The result lines up with the sampled mask of the same sequence. logits (B, T, V), input_ids (B, T) -> (B, T).
    With `positions` (1-D), logits are (B, P, V) at those positions only (`model(..., logits_to_keep=positions)`)
    and only the tokens at positions + 1 get a log-prob; every other entry of the output is 0.
    `banned` (1-D ids, `stream.unsayable_ids`) get -inf logits first, as the streamer masks them when sampling, so
    the update sees the distribution that was sampled; a forced token among them gets -inf, which the loss masks.
    """
    if positions is None:
        logits, positions = logits[:, :-1], torch.arange(logits.shape[1] - 1)
    positions = positions.to(logits.device)
    logits = logits.float() / temperature
    if banned is not None:
        logits = logits.index_fill(-1, banned.to(logits.device), float("-inf"))
    logp = F.log_softmax(logits, dim=-1)  # (B, P, V): float32 even under autocast
    out = logp.gather(-1, input_ids.to(logp.device)[:, positions + 1, None])[..., 0]  # (B, P)
    return out.new_zeros(input_ids.shape).index_copy(1, positions + 1, out)  # (B, T)


def ppo_loss(logprobs, old_logprobs, advantages, mask, cfg, ref_logprobs=None):
    """PPO-clip loss with dual clip and optional KL, aggregated per cfg.loss_agg. Returns (loss, stats).

    Per sampled token, with r = exp(logp - logp_old), A the trajectory's advantage, eps = cfg.clip_eps and
    c = cfg.dual_clip, in the "loss = - objective" convention:
        l = max(-r A, -clip(r, 1 - eps, 1 + eps) A)     (PPO: the pessimistic of unclipped and clipped)
        if A < 0 and c is set:  l = min(l, -c A)       (dual clip: bounds the loss when r >> 1)
        if cfg.kl_coef > 0:     l += kl_coef * (exp(q) - q - 1),  q = ref_logp - logp   (k3 estimator, >= 0)
    Aggregation over the mask m (B, T) with n_i = sum_t m_it:
        traj_token_mean: mean_i (sum_t m_it l_it / n_i)        (the paper)
        token_mean:      sum_it m_it l_it / sum_i n_i
        seq_sum:         mean_i (sum_t m_it l_it / cfg.seq_sum_norm)   (Dr.GRPO)
    logprobs, old_logprobs, ref_logprobs (B, T); advantages (B,), or (B, T) per token (train_rl.py's opt-in credit);
    mask (B, T) bool.
    """
    mask = mask.bool()
    m = mask.float()
    adv = advantages.to(logprobs.dtype)
    adv = adv[:, None] if adv.dim() == 1 else adv  # (B, 1): one advantage for every token of a trajectory
    # Masked positions (context, padding) may hold anything; zero their log-ratio before exp() so no inf appears.
    log_ratio = torch.where(mask, logprobs - old_logprobs, torch.zeros_like(logprobs))
    ratio = log_ratio.exp()
    pg1 = -adv * ratio
    pg2 = -adv * ratio.clamp(1 - cfg.clip_eps, 1 + cfg.clip_eps)
    loss_tok = torch.maximum(pg1, pg2)
    dual = torch.zeros_like(mask)
    if cfg.dual_clip is not None:
        dual = (adv < 0) & (loss_tok > -cfg.dual_clip * adv)
        loss_tok = torch.where(dual, -cfg.dual_clip * adv, loss_tok)
    kl = torch.zeros_like(logprobs)
    if cfg.kl_coef > 0:
        if ref_logprobs is None:
            raise ValueError("GRPOConfig.kl_coef > 0 needs ref_logprobs from a frozen reference model.")
        q = torch.where(mask, ref_logprobs - logprobs, torch.zeros_like(logprobs))
        kl = q.exp() - q - 1
        loss_tok = loss_tok + cfg.kl_coef * kl

    n_i = m.sum(1)  # (B,) sampled tokens per trajectory
    if cfg.loss_agg == "traj_token_mean":
        loss = ((loss_tok * m).sum(1) / n_i.clamp(min=1)).mean()
    elif cfg.loss_agg == "token_mean":
        loss = (loss_tok * m).sum() / n_i.sum().clamp(min=1)
    else:  # seq_sum
        loss = ((loss_tok * m).sum(1) / cfg.seq_sum_norm).mean()

    def masked_mean(x):
        return ((x.detach().float() * m).sum() / m.sum().clamp(min=1)).item()
    stats = {"clip_frac": masked_mean(pg2 > pg1), "dual_clip_frac": masked_mean(dual),
             "ratio_mean": masked_mean(ratio), "kl": masked_mean(kl), "loss": loss.item()}
    return loss, stats


def micro_batch_weight(mask, n_trajectories, n_tokens, cfg):
    """The share of the whole batch's loss that one micro-batch's `ppo_loss` stands for, so that the weighted
    micro-batch losses (and their gradients) add up to those of one pass over the batch: its share of the batch's
    sampled tokens under "token_mean" (every token weighs the same), else its share of the trajectories (each
    trajectory weighs the same). mask (b, T): the micro-batch's sampled mask; n_trajectories, n_tokens: the
    batch's trajectories and sampled tokens.
    Example: trajectories with 2, 6 and 4 sampled tokens in micro-batches [0, 1] and [2]: "token_mean" weighs
    them 8/12 and 4/12, the other aggregations 2/3 and 1/3."""
    if cfg.loss_agg == "token_mean":
        return mask.sum().item() / n_tokens
    return mask.shape[0] / n_trajectories
