"""Multi-turn GRPO from the SFT model (docs/method.md section 3.2; the reward in 3.3).

One step: take `prompts_per_step` dialogues; for each, pick an episode window of the video, feed the turns
before it as context with their ground-truth replies, prefill that context once and expand the cache to a
group of G rows, and let every row play every turn of the window (sampling at temperature 1.2, top-k 10); the
groups of a step play side by side in one batch.
Each trajectory gets one scalar reward from mmduet2/rewards.py; group-normalised advantages go on every
token the policy sampled (replies, `NO REPLY` and their <|im_end|>), and one PPO-clip update follows.

With no arguments this is the second step of the toy experiment: RL from runs/toy/sft into runs/toy/rl on
CPU with the rule judge. Departures from the paper, all for the toy's sake and all flags: a higher learning
rate (the toy model is tiny and trained briefly), 16 prompts per step instead of 8 (steadier steps), 2 s per
frame as in SFT, episodes of 20-32 s instead of 20-60 s (toy videos are 36-48 s, so episodes start with context
turns), and replies capped at 24 tokens since toy answers are short.

The kept checkpoint (OUT) is the one with the best mean RL reward on the val questions, streamed greedily; the
reward charges repeats and talk outside the gold spans, which val PAUC alone does not (`--select pauc` keeps
the best val PAUC instead). Every validation is logged with both.

Data parallel: `torchrun --nproc_per_node N train_rl.py ...` has every process roll out its own
`prompts_per_step` prompts and averages the gradients (N times the prompts per step); process 0 logs its own
rollouts, validates and saves.
"""
import copy
import json
import os
import sys
import time
from dataclasses import asdict, dataclass, field

import numpy as np
import torch
from PIL import Image, ImageDraw

from mmduet2 import grpo
from mmduet2.checkpoint import check_resume, load_checkpoint, load_trainer_state, save_checkpoint
from mmduet2.data import load_proactive_records
from mmduet2.dialogue import NO_REPLY
from mmduet2.evaluate import predict_records, reply_delays, score
from mmduet2.judges import REWARD_MAX, JudgeError, LLMJudge
from mmduet2.lora import apply_lora, merge_lora
from mmduet2.model import MMDuet2
from mmduet2.plot import COLOURS, save_png
from mmduet2.rewards import RewardConfig, proactive_reward, turn_penalties
from mmduet2.stream import StreamConfig, Streamer, unsayable_ids
from mmduet2.training import (Split, autocast, collate, init_parallel, loss_positions, model_inputs, parse_config,
                              seed_everything)
from shapewatch import RuleJudge, rule_repetition_judge


@dataclass
class RLConfig:
    sft: str = "runs/toy/sft"          # the policy to start from (hub layout + tokenizer.json)
    data: str = "data/toy"             # folder with train.jsonl and val_proactive.json
    out: str = "runs/toy/rl"           # the best-val policy; the latest step goes to OUT_last
    steps: int = 100                   # GRPO steps (the paper: about 500)
    prompts_per_step: int = 16         # dialogues per step, each rolled out group_size times (the paper: 8)
    group_size: int = 4                # rollouts per prompt (G)
    lr: float = 1.5e-4                 # the paper uses 1e-6 on the 3B model
    weight_decay: float = 0.01
    grad_clip: float = 1.0
    micro_batch: int = 16              # trajectories per forward/backward in the update
    temperature: float = 1.2           # sampling temperature; log-probs use it too
    top_k: int = 10                    # sampling top-k
    max_new_tokens: int = 24           # the paper: 100
    episode_min: float = 20.0          # seconds of video the policy plays (shorter videos: all of it)
    episode_max: float = 32.0          # the paper: 60 (toy videos are 36-48 s)
    frames_per_turn: int = 2
    frame_interval: float = 2.0        # seconds per frame, as in SFT (the toy also evaluates at 2 s; README)
    # GRPO switches (paper defaults; see mmduet2/grpo.py)
    normalize_std: bool = True         # divide by the group's unbiased reward std (False: Dr.GRPO, centring only)
    skip_constant_groups: bool = False  # leave out of the update the groups whose rewards are all equal
    clip_eps: float = 0.2
    dual_clip: float = 3.0             # c of the dual clip for negative advantages (0: off)
    kl_coef: float = 0.0
    loss_agg: str = "traj_token_mean"  # traj_token_mean | token_mean | seq_sum
    adv_per_term: bool = False         # not the paper's: normalise each reward term in its group, then weight
    turn_credit: float = 0.0           # not the paper's: extra advantage -C on a repeating or off-span turn's tokens
    centre_decisions: bool = False     # not the paper's: each turn's decision token's advantage centred per class
    # the reward: each field of RewardConfig (mmduet2/rewards.py) is a flag of its own (--w-rep 0, --out-mode replies)
    reward: RewardConfig = field(default_factory=RewardConfig)
    judge: str = "rule"                # rule | llm
    judge_url: str = ""                # OpenAI-compatible base URL for --judge llm
    judge_model: str = ""              # model name served there
    judge_timeout: float = 60.0        # seconds per judge request before a retry
    judge_max_failures: float = 0.1    # stop when more than this share of the judgements failed
    lora_rank: int = 0                 # 0 = full fine-tuning
    lora_alpha: float = 32.0           # LoRA scale is alpha / rank
    lora_targets: str = "q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj"  # decoder linears to adapt
    grad_checkpointing: bool = False   # recompute decoder layers in backward to save memory
    eval_every: int = 20               # steps between validations (the best is kept)
    eval_examples: int = 120           # val questions per validation (0 = all)
    select: str = "reward"             # which val figure picks the kept checkpoint: reward | pauc
    save_every: int = 20               # steps between resumable checkpoints (OUT_last)
    sample_every: int = 10             # steps between printed sample transcripts
    seed: int = 0
    device: str = "auto"               # cpu, cuda or auto


# the figures of the printed line per step (every figure goes to OUT_log.jsonl), beside the reward terms
PRINTED = ("step", "reward", "reply_rate", "reply_delay", "grad_norm", "step_s", "val_reward", "val_pauc", "val_dup")


@dataclass
class Judges:
    """Who scores a run: the reward's similarity and repetition judges, the benchmark judge of validation, and the
    LLM judge behind them (None with the rule judges), whose failure rate is checked after every rollout."""
    sim: object
    rep: object
    bench: object
    llm: LLMJudge = None


def make_judges(cfg):
    """The rule judges (the toy's; no server), or the LLM judge at --judge-url, checked before the first rollout."""
    if cfg.judge != "llm":
        return Judges(RuleJudge(max_score=cfg.reward.max_score, precision=True), rule_repetition_judge,
                      RuleJudge(max_score=2))
    if cfg.reward.max_score != REWARD_MAX:
        sys.exit(f"--max-score {cfg.reward.max_score}: the LLM judge's reward rubric scores 0..{REWARD_MAX}; run it "
                 f"with --max-score {REWARD_MAX}.")
    llm = LLMJudge(cfg.judge_url, cfg.judge_model, timeout=cfg.judge_timeout)
    try:
        llm.ping()  # before the first rollout, not after it
    except JudgeError as e:
        sys.exit(str(e))
    return Judges(llm.reward_score, llm.is_repetition, llm.benchmark_score, llm)


def episode_window(specs, rng, cfg):
    """Split the turns into (context, played): the played window covers episode_min..episode_max seconds."""
    length = rng.uniform(cfg.episode_min, cfg.episode_max)
    if specs[-1].time <= length:
        return [], specs
    start = rng.uniform(0, specs[-1].time - length)
    ctx = [s for s in specs if s.time <= start]
    return ctx, [s for s in specs if start < s.time <= start + length]


def gold_answers(rec, first=float("-inf"), last=float("inf")):
    """The reward's gold answers of a training record whose reply spans overlap (first, last] seconds."""
    return [{"content": a["content"], "reply_timespan": a["reply_timespan"],
             "question": rec["questions"][a["question"]]["text"]}
            for a in rec["answers"] if a["reply_timespan"][1] > first and a["reply_timespan"][0] <= last]


def rollout(model, tok, split, prompts, rng, cfg, judges):
    """G trajectories for each prompt, played as one batch; returns a list of grpo.Episode, group by group.

    Each prompt's context turns are prefilled once and the cache expanded to its G rows; then the groups are
    concatenated and every turn is one batched step in which each row sees its own video (a row whose window
    has ended sits the remaining turns out)."""
    stream_cfg = StreamConfig(cfg.frames_per_turn, cfg.frame_interval, cfg.max_new_tokens, cfg.temperature,
                              cfg.top_k, max_pixels=split.max_pixels)
    windows, groups = [], []
    for i in prompts:
        frames, specs = split.frames(i), split.turns(i)
        ctx, play = episode_window(specs, rng, cfg)
        streamer = Streamer(model, tok, stream_cfg, seed=int(rng.integers(1 << 31)))
        for s in ctx:
            streamer.step([frames[k - 1] for k in s.frame_indices], s.user_text, reply=s.reply)
        streamer.expand(cfg.group_size)
        windows.append((split.records[i], frames, ctx, play))
        groups.append(streamer)
    batch, g_size = Streamer.concat(groups), cfg.group_size
    for k in range(max(len(play) for *_, play in windows)):
        frames_k, texts = [], []
        for rec, frames, ctx, play in windows:
            turn = play[k] if k < len(play) else None
            frames_k += [None if turn is None else [frames[j - 1] for j in turn.frame_indices]] * g_size
            texts += [None if turn is None else turn.user_text] * g_size
        batch.step_rows(frames_k, texts, [None] * len(texts))

    episodes = []
    for p, (rec, frames, ctx, play) in enumerate(windows):
        first, last = play[0].time - cfg.frame_interval * cfg.frames_per_turn, play[-1].time
        answers = gold_answers(rec, first, last)
        context_replies = [s.reply for s in ctx if s.reply != NO_REPLY]
        questions = [(q["time"], q["text"]) for q in rec["questions"]]
        # the G rows of a group saw the same frames: concatenate them once
        pixel_values, grids = torch.cat(batch.pixel_values[p * g_size]), torch.cat(batch.grids[p * g_size])
        for g, row in enumerate(batch.rows[p * g_size:(p + 1) * g_size]):
            turns = row.turns[len(ctx):]
            total, comps = proactive_reward(turns, answers, context_replies, judges.sim, judges.rep, cfg.reward,
                                            questions)
            penalties = (turn_penalties(turns, answers, context_replies, judges.rep, questions)
                         if cfg.turn_credit else None)
            episodes.append(grpo.Episode(prompt_id=rec["id"], group=g, input_ids=row.ids, sampled_mask=row.sampled,
                                         turns=turns, reward=total, components=comps, pixel_values=pixel_values,
                                         image_grid_thw=grids, answers=answers, turn_penalties=penalties))
    return episodes


def sampled_logprobs(module, inputs, mask, cfg, banned):
    """Per-token log-probs (B, T) under `module`, its logits computed only where a sampled token is predicted."""
    pos = loss_positions(mask)
    return grpo.token_logprobs(module(**inputs, logits_to_keep=pos), inputs["input_ids"], cfg.temperature, pos, banned)


def validate(model, tok, records, cfg, judges):
    """Greedy streams of the val questions: benchmark metrics, plus the RL reward of each whole stream."""
    model.eval()
    stream_cfg = StreamConfig(cfg.frames_per_turn, cfg.frame_interval, cfg.max_new_tokens, keep_pixels=False)
    with autocast(model.device):
        preds, failed = predict_records(model, tok, records, cfg.data, stream_cfg, log=None, batch_size=40)
    if failed:
        sys.exit(f"{len(failed)} val videos could not be read, e.g. {failed[0][0]}: {failed[0][1]}")
    m, rewards = score(records, preds, judges.bench), []
    for rec in records:
        said, q = {r["time"]: r["content"] for r in preds[rec["question_id"]]["replies"]}, rec["conversation"][0]
        turns = [(t, said.get(t, NO_REPLY)) for t in preds[rec["question_id"]]["turn_times"]]
        answers = [{"content": a["content"], "reply_timespan": a["reply_timespan"], "question": q["content"]}
                   for a in rec["answer"]]
        rewards.append(proactive_reward(turns, answers, [], judges.sim, judges.rep, cfg.reward,
                                        [(q["time"], q["content"])])[0])
    m["reward"] = float(np.mean(rewards))
    return m


def save_policy(path, model, tok, optimizer, step, cfg, history):
    """A resumable checkpoint. With LoRA it is a merged, plain hub-layout copy (what eval.py reads) and the adapters
    themselves go into trainer_state.pt for --resume; training goes on unmerged."""
    if not cfg.lora_rank:
        return save_checkpoint(path, model, tok, optimizer, step, asdict(cfg), extra=history)
    adapters = {k: v.detach().cpu() for k, v in model.state_dict().items() if ".lora_" in k}
    save_checkpoint(path, merge_lora(copy.deepcopy(model)), tok, optimizer, step, asdict(cfg),
                    extra={**history, "lora": adapters})


def restore_adapters(model, adapters, cfg, last_dir):
    """Put back the LoRA adapters a resumed run saved (the base weights are the SFT model's, which LoRA leaves)."""
    if bool(adapters) != bool(cfg.lora_rank):
        sys.exit(f"{last_dir} was saved by a run {'with' if adapters else 'without'} LoRA: resume it with the "
                 "same --lora-rank (and targets) it was started with.")
    if adapters:
        loaded = model.load_state_dict(adapters, strict=False)  # the base weights are "missing" by design
        if loaded.unexpected_keys or any(".lora_" in k for k in loaded.missing_keys):
            sys.exit(f"the adapters in {last_dir} do not fit --lora-targets {cfg.lora_targets}: resume with the "
                     "targets the run was started with.")


def validate_and_keep_best(model, tok, optimizer, step, history, val_records, cfg, judges):
    """Validate, record the figures in `history`, and save the policy to cfg.out if it is the best so far."""
    m = validate(model, tok, val_records, cfg, judges)
    history["val_pauc"].append((step, m["pauc"]))
    history["val_dup"].append((step, 100 * m["duplicate_ratio"]))
    history["val_reward"].append((step, m["reward"]))
    if m[cfg.select] > history["best"][1]:
        history["best"] = (step, m[cfg.select])
        save_policy(cfg.out, model, tok, optimizer, step, cfg, history)
    return m


# ---- opt-in credit experiments (not the paper's; the paper's advantage is grpo.group_advantages) ------------

def term_advantages(components, weights, group_size, normalize_std=True):
    """Per-term advantages, an opt-in reward experiment (ThinkStream's idea, not MMDuet2's): each reward term is
    normalised within its group on its own, then the terms' advantages are averaged with the reward weights, so a
    term that rarely varies (r_rep) is not drowned by a noisy one (r_pauc). components (N, K), weights (K,) -> (N,).
    Example (G = 2, weights 3 and 2): terms [[1, 0], [0, -1]] give per-term advantages [[.71, .71], [-.71, -.71]]
    (normalised, eps aside), so A = [0.71, -0.71]; a term equal across the group adds 0."""
    per_term = torch.stack([grpo.group_advantages(components[:, k], group_size, normalize_std)
                            for k in range(components.shape[1])], 1)  # (N, K)
    w = torch.as_tensor(weights, dtype=per_term.dtype)
    return (per_term * w).sum(1) / w.abs().sum()


def turn_advantages(advantages, sampled_masks, turn_penalties, credit):
    """Per-turn credit, an opt-in reward experiment (StreamPro mixes turn- and trajectory-level rewards; MMDuet2
    does not): every sampled token gets its trajectory's advantage, and the tokens of a turn the reward penalises
    (a repeat, or talk outside every gold span) get `credit` times its penalty (<= 0) on top, so the update can
    tell which turn of a long episode was the mistake. sampled_masks: per trajectory its sampled-token mask, whose
    runs of True are its played turns in order; turn_penalties: per trajectory one value per played turn.
    Returns (N, T_max) float, zero past each trajectory's end.
    Example: A = 0.5, mask [F, T, T, F, T], penalties [0, -1], credit 1 -> [0.5, 0.5, 0.5, 0.5, -0.5]."""
    out = torch.zeros(len(sampled_masks), max(map(len, sampled_masks)))
    for i, (mask, pens) in enumerate(zip(sampled_masks, turn_penalties)):
        out[i, :len(mask)] = float(advantages[i])
        turn, prev = -1, False
        for t, m in enumerate(mask):
            turn += m and not prev
            prev = m
            if m:
                out[i, t] += credit * pens[turn]
    return out


def decision_centred_advantages(advantages, input_ids, sampled_masks, silent_id):
    """Decisions centred per class, an opt-in credit experiment (not the paper's): every sampled token gets its
    trajectory's advantage, except each played turn's first token, the decision (`silent_id`, the first token of
    NO REPLY, or a reply's first word), whose advantage has the mean over the step's decisions of its class
    (silent or reply) subtracted. The update then no longer pushes speaking as a whole up or down (with
    trajectory-level credit, the rollouts that say more collect more penalties, so every decision drifts towards
    NO REPLY); only which turns speak is left to it. The mean is over the rollouts given (one process's under
    torchrun), constant groups' decisions included. Returns (N, T_max) float, like `turn_advantages`.
    Example, silent id 7: A = [1, -1], ids [[0, 7, 5], [0, 7, 9]], masks [[F, T, T], [F, T, T]] -> both decisions
    silent, their mean 0 -> unchanged; with ids [[0, 7, 5], [0, 3, 9]] each class holds one decision -> both 0."""
    out = torch.zeros(len(sampled_masks), max(map(len, sampled_masks)), dtype=torch.float64)
    decisions = {True: [], False: []}  # is silent -> [(trajectory, position)]
    for i, (ids, mask) in enumerate(zip(input_ids, sampled_masks)):
        out[i, :len(mask)] = float(advantages[i])
        for t, m in enumerate(mask):
            if m and not (t and mask[t - 1]):
                decisions[int(ids[t]) == silent_id].append((i, t))
    for picked in decisions.values():
        if picked:
            rows, cols = zip(*picked)
            out[rows, cols] -= out[rows, cols].mean()
    return out.float()


def curves(history, window=10):
    """The plotted series: reward as a running mean over `window` steps (one step is noisy), and the val reward,
    PAUC and duplicate % at each validation."""
    values = [v for _, v in history["reward"]]
    mean = [(s, float(np.mean(values[max(0, k - window + 1):k + 1]))) for k, (s, _) in enumerate(history["reward"])]
    return {f"reward ({window}-step mean)": mean, "val reward": history["val_reward"], "val PAUC": history["val_pauc"],
            "val dup %": history["val_dup"]}


def draw_curves(path, series, title="", xlabel="step"):
    """Line plot of {name: [(x, y), ...]}, one panel per series with its own y range (labelled at the left)
    and a shared x axis from 0 (labelled under each panel)."""
    width, height, left, top, bottom = 900, 120 + 160 * len(series), 80, 30, 30
    img = Image.new("RGB", (width, height), "white")
    d = ImageDraw.Draw(img)
    d.text((left, 8), title[:120], fill="black")
    panel = (height - top - bottom) / max(len(series), 1)
    for k, (name, pts) in enumerate(series.items()):
        y0, y1 = top + k * panel + 10, top + (k + 1) * panel - 10
        d.rectangle([left, y0, width - 20, y1], outline="grey")
        d.text((5, y0), name[:11], fill="black")
        d.text((5, y0 + 12), name[11:22], fill="black")
        if not pts:
            continue
        xs, ys = [p[0] for p in pts], [p[1] for p in pts]
        lo, hi = min(ys), max(ys)
        hi = hi if hi > lo else lo + 1.0
        xmax = max(max(xs), 1)
        px = lambda v: left + (width - 20 - left) * v / xmax
        py = lambda v: y1 - (y1 - y0) * (v - lo) / (hi - lo)
        d.text((5, y0 + 28), f"{hi:.3g}", fill="black")
        d.text((5, y1 - 12), f"{lo:.3g}", fill="black")
        d.line([(px(a), py(b)) for a, b in pts], fill=COLOURS[k % len(COLOURS)], width=2)
        for a, b in pts[-1:]:
            d.text((px(a) - 40, py(b) - 14), f"{b:.3g}", fill="black")
        d.text((left - 3, y1 + 2), "0", fill="black")
        d.text((width - 20 - 6 * len(f"{xmax:g}"), y1 + 2), f"{xmax:g}", fill="black")
    d.text((width // 2, height - 20), xlabel, fill="black")
    save_png(img, path)


def main():
    # ---- setup ------------------------------------------------------------------------------------------
    cfg, resume = parse_config(RLConfig, __doc__.splitlines()[0])
    par, device = init_parallel(cfg.device)
    if par.world > 1 and cfg.skip_constant_groups:
        sys.exit("--skip-constant-groups gives processes different numbers of micro-batches, which DDP cannot "
                 "synchronise: run it without torchrun, or drop the flag (constant groups have advantage 0 anyway).")
    if par.main:
        print(json.dumps(asdict(cfg), indent=2))
    seed_everything(cfg.seed)
    gcfg = grpo.GRPOConfig(clip_eps=cfg.clip_eps, dual_clip=cfg.dual_clip or None, kl_coef=cfg.kl_coef,
                           loss_agg=cfg.loss_agg)
    judges = make_judges(cfg)

    # ---- data -------------------------------------------------------------------------------------------
    train = Split(os.path.join(cfg.data, "train.jsonl"), cfg.frames_per_turn, cfg.frame_interval)
    val_records = load_proactive_records(os.path.join(cfg.data, "val_proactive.json"))[:cfg.eval_examples or None]
    if cfg.centre_decisions and cfg.turn_credit:
        sys.exit("--centre-decisions and --turn-credit each set a per-token credit; choose one.")
    if cfg.select not in ("reward", "pauc"):
        sys.exit(f"--select {cfg.select!r}: choose reward (the val RL reward) or pauc (val PAUC).")

    # ---- model ------------------------------------------------------------------------------------------
    # cfg.out holds the policy with the best val score so far (--select; what eval.py reads); cfg.out + "_last"
    # holds the latest step with its optimizer state, for --resume. The model is selected on the val split, never
    # on test. LoRA never changes the base weights, so a LoRA run resumes from the SFT weights plus the adapters
    # saved in trainer_state.pt.
    last_dir = cfg.out.rstrip("/") + "_last"
    if resume:  # the saved adapters and optimizer state belong to one base model and data
        check_resume(last_dir, cfg, ("sft", "data", "lora_rank", "lora_targets"))
    src = last_dir if resume and not cfg.lora_rank else cfg.sft
    if not os.path.exists(os.path.join(src, "config.json")):
        sys.exit(f"{src} holds no checkpoint: run train_sft.py first (or pass --sft DIR).")
    model, tok = load_checkpoint(src, device=device)
    banned = unsayable_ids(tok, model.config.text.vocab_size)  # masked when sampling, so in the update too
    if cfg.lora_rank:
        apply_lora(model, rank=cfg.lora_rank, alpha=cfg.lora_alpha, targets=tuple(cfg.lora_targets.split(",")))
    model.model.gradient_checkpointing = cfg.grad_checkpointing
    ref = None
    if cfg.kl_coef > 0:  # a frozen copy of the starting policy, only when the KL switch is on
        ref = MMDuet2.from_pretrained(cfg.sft).to(device).eval().requires_grad_(False)
    params = [p for p in model.parameters() if p.requires_grad]
    net = par.wrap(model)  # what the update's forward/backward go through (DDP under torchrun)
    optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    step, history = 0, {"reward": [], "val_pauc": [], "val_dup": [], "val_reward": [], "best": (0, -float("inf"))}
    if resume:
        step, history = load_trainer_state(last_dir, optimizer)
        restore_adapters(model, history.pop("lora", None), cfg, last_dir)
    if not resume and par.main:
        m = validate_and_keep_best(model, tok, optimizer, step, history, val_records, cfg, judges)
        print(f"step 0 val reward {m['reward']:.3f}  PAUC {m['pauc']:.1f}  dup {m['duplicates']} of "
              f"{m['replies_after_first']}  replies/ex {m['reply_turns']:.2f}  delay {m['median_reply_delay']}")

    # ---- loop -------------------------------------------------------------------------------------------
    # Named after the output folder (runs/toy/rl -> runs/toy/rl_log.jsonl, rl_curves.png): runs never share them.
    log = open(cfg.out.rstrip("/") + "_log.jsonl", "a") if par.main else None
    t0 = time.time()
    while step < cfg.steps:
        ts = time.time()
        # The step's prompts and samples depend on (seed, step) (and the process under torchrun), so a resumed
        # run plays exactly the rollouts the uninterrupted one would have.
        rng = np.random.default_rng([cfg.seed, step] + ([par.rank] if par.world > 1 else []))

        # rollout
        model.eval()
        prompts = rng.choice(len(train), size=cfg.prompts_per_step, replace=len(train) < cfg.prompts_per_step)
        with autocast(model.device):  # bf16 on a GPU, as the update; the update recomputes every log-prob it uses
            episodes = rollout(model, tok, train, [int(i) for i in prompts], rng, cfg, judges)
        t_roll = time.time() - ts

        # reward -> advantages
        rewards = torch.tensor([ep.reward for ep in episodes])
        if judges.llm:  # a judge answering nonsense would otherwise train on a constant reward
            try:
                judges.llm.check_failures(cfg.judge_max_failures)
            except JudgeError as e:
                sys.exit(f"step {step + 1}: {e}")
        if cfg.adv_per_term:
            weights = cfg.reward.weights()
            comps = torch.tensor([[ep.components[k] for k in weights] for ep in episodes])
            adv = term_advantages(comps, list(weights.values()), cfg.group_size, cfg.normalize_std)
        else:
            adv = grpo.group_advantages(rewards, cfg.group_size, normalize_std=cfg.normalize_std)
        token_adv = None  # (N, T) when the credit differs along a trajectory
        if cfg.centre_decisions:
            token_adv = decision_centred_advantages(adv, [ep.input_ids for ep in episodes],
                                                   [ep.sampled_mask for ep in episodes], tok.encode(NO_REPLY)[0])
        keep = torch.ones(len(episodes), dtype=torch.bool)
        if cfg.skip_constant_groups:
            keep = ~grpo.constant_group_mask(rewards, cfg.group_size)

        # update: one gradient step over the kept trajectories, in micro-batches of cfg.micro_batch whose weighted
        # losses add up to the loss of the whole batch (grpo.micro_batch_weight)
        model.train()
        idx = keep.nonzero()[:, 0].tolist()
        n_tokens = sum(sum(episodes[i].sampled_mask) for i in idx)
        stats_sum, n_seen = {}, 0
        for k in range(0, len(idx), cfg.micro_batch):
            part, last = idx[k:k + cfg.micro_batch], k + cfg.micro_batch >= len(idx)
            batch = collate([{"input_ids": episodes[i].input_ids, "loss_mask": episodes[i].sampled_mask,
                              "pixel_values": episodes[i].pixel_values,
                              "image_grid_thw": episodes[i].image_grid_thw} for i in part])
            inputs = model_inputs(batch, device, model.dtype)
            mask = batch["loss_mask"].to(device)
            with par.no_sync(net, last):  # DDP averages the gradients once, after the last micro-batch
                with autocast(device):
                    logp = sampled_logprobs(net, inputs, mask, cfg, banned)
                    ref_logp = None
                    if ref is not None:
                        with torch.no_grad():
                            ref_logp = sampled_logprobs(ref, inputs, mask, cfg, banned)
                # One on-policy update per batch (docs/method.md 3.2): the old policy is this one, so every ratio is
                # exactly 1, no clip binds, and the gradient is the plain policy gradient of A * log p.
                if token_adv is not None:
                    adv_part = token_adv[part, :mask.shape[1]]
                elif cfg.turn_credit:
                    adv_part = turn_advantages(adv[part], [episodes[i].sampled_mask for i in part],
                                               [episodes[i].turn_penalties for i in part], cfg.turn_credit)
                else:
                    adv_part = adv[part]
                loss, stats = grpo.ppo_loss(logp, logp.detach(), adv_part.to(device), mask, gcfg, ref_logp)
                (loss * grpo.micro_batch_weight(mask, len(idx), n_tokens, gcfg)).backward()
            for key, v in stats.items():
                stats_sum[key] = stats_sum.get(key, 0.0) + float(v) * len(part)
            n_seen += len(part)
        grad_norm = torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip).item() if idx else 0.0
        if idx:
            optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        step += 1

        # log
        played = [t for ep in episodes for t in ep.turns]
        delays = [d for ep in episodes for d in reply_delays([a["reply_timespan"] for a in ep.answers], ep.turns)]
        entry = {"step": step, "reward": rewards.mean().item(), "reward_std": rewards.std().item(),
                 **{k: float(np.mean([ep.components[k] for ep in episodes])) for k in episodes[0].components},
                 "adv_abs_mean": adv.abs().mean().item(), "groups_kept": len(idx) / len(episodes),
                 "reply_rate": sum(t[1] != NO_REPLY for t in played) / max(1, len(played)),
                 "reply_delay": float(np.mean(delays)) if delays else None, "grad_norm": grad_norm,
                 "tokens_per_s": sum(len(ep.input_ids) for ep in episodes) / (time.time() - ts),
                 "rollout_s": t_roll, "step_s": time.time() - ts,
                 "judge_failures": judges.llm.failures if judges.llm else 0,
                 **{k: v / max(1, n_seen) for k, v in stats_sum.items()}}
        if not par.main:
            continue
        history["reward"].append((step, entry["reward"]))

        # eval (its figures join the step's log line)
        if step % cfg.eval_every == 0 or step == cfg.steps:
            m = validate_and_keep_best(model, tok, optimizer, step, history, val_records, cfg, judges)
            entry.update(val_reward=m["reward"], val_pauc=m["pauc"], val_dup=m["duplicate_ratio"])
        print(" ".join(f"{k} {v:.3g}" if isinstance(v, float) else f"{k} {v}" for k, v in entry.items()
                       if k in PRINTED or k in episodes[0].components), flush=True)
        log.write(json.dumps(entry) + "\n")
        log.flush()
        if step % cfg.sample_every == 0:
            ep = episodes[0]
            spans = [a["reply_timespan"] for a in ep.answers]
            print(f"  sample {ep.prompt_id} (reward {ep.reward:.2f}, gold spans {spans}): "
                  + " | ".join(f"{t:g}s {text}" for t, text in ep.turns if text != NO_REPLY))

        # checkpoint
        if step % cfg.save_every == 0 or step == cfg.steps:
            save_policy(last_dir, model, tok, optimizer, step, cfg, history)
            draw_curves(cfg.out.rstrip("/") + "_curves.png", curves(history), title="GRPO on ShapeWatch")
    par.close()
    if not par.main:
        return
    best_step, best = history["best"]
    print(f"RL done in {time.time() - t0:.0f} s; the best val {cfg.select} ({best:.3g}, step {best_step}) is in "
          f"{cfg.out}, the last step in {last_dir}")


if __name__ == "__main__":
    sys.exit(main())
