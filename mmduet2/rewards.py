"""The trajectory reward of MMDuet2's multi-turn GRPO: R = 3*r_pauc + 2*r_rep + 0.5*r_out + 2*r_pfx
(docs/method.md section 3.3).

One rollout is the list of its assistant turns (time, text), "NO REPLY" included, played over a video window whose
earlier turns were given as context with their ground-truth replies. Each term is a small function below with a
worked example; `proactive_reward` returns (total, components) so every term can be logged. Semantics follow the
released reward code (recipe/proactive/reward_function.py) term by term. Where this file differs:
  - the released code keys judgements by turn time, so a turn inside two overlapping spans got the later span's
    similarity score in both; here each (span, reply) is judged against its own gold answer;
  - r_pfx never counts a "NO REPLY" turn (the released code compares it too, but 8 characters cannot reach the
    50-character threshold, so the result is the same unless the threshold is set below 9);
  - an empty rollout scores 0 on every term instead of raising;
  - r_rep's within-span recount includes exact repeats (`RewardConfig.recount_repeats`; see r_rep), and its judge
    also gets the question in force, which the rule judge needs to tell a relevant object from a stray word.

Running example (docs/method.md section 3.4, a test): spans [1,3] and [3,9]; turns t = 1..8: NO REPLY; A = "The
young blonde woman is seemingly involved in a conversation or video call."; NO REPLY; NO REPLY; B = "The woman is
brushing her teeth with a toothbrush."; C = "The woman is brushing her teeth with a toothbrush, and holding a
toothpaste."; NO REPLY; NO REPLY. Context reply: "The woman is brushing her teeth with toothbrush.". Similarity judge:
A -> 4, B -> 3, C -> 4; repetition judge: A no, B yes, C no. R = 3*0.807292 + 2*(-0.25) + 0 + 0 = 1.921875.
"""
import os
from dataclasses import dataclass, fields

from .dialogue import silent
from .judges import REWARD_MAX, judge_many
from .metrics import pauc_area


@dataclass
class RewardConfig:
    """The reward's weights and settings, each also a train_rl.py flag (--w-rep 0, --out-mode replies). A weight
    field w_X weighs the term r_X in the total (`weights`), so a new term needs a function, a weight and one line
    in `proactive_reward`'s components."""
    w_pauc: float = 3.0         # weight of r_pauc, answer quality integrated over time
    w_rep: float = 2.0          # weight of r_rep, the repetition penalty
    w_out: float = 0.5          # weight of r_out, speaking outside every gold span
    w_pfx: float = 2.0          # weight of r_pfx, replies sharing a prefix of prefix_chars characters
    max_score: int = REWARD_MAX  # S: the similarity judge answers 0..S (4: the LLM judge's 5-level rubric)
    omega: float = 0.5          # time-axis compression of the PAUC area (0: timing counts fully, 1: not at all)
    start_score: float = 0.5    # the step function's value before the first reply (no reply: 0.5 / S)
    prefix_chars: int = 50      # a reply sharing a prefix this long with an earlier one counts as copied
    out_mode: str = "turns"     # turns: released code (per out-of-span turn) | replies: paper text (per reply)
    recount_repeats: bool = True  # r_rep recounts exact repeats inside a span too (False: the released rule)

    def __post_init__(self):
        if self.out_mode not in ("turns", "replies"):
            raise ValueError(f"RewardConfig.out_mode must be 'turns' or 'replies', not {self.out_mode!r}.")

    def weights(self):
        """{term: weight} in field order, e.g. {"r_pauc": 3.0, "r_rep": 2.0, "r_out": 0.5, "r_pfx": 2.0}."""
        return {"r_" + f.name[2:]: getattr(self, f.name) for f in fields(self) if f.name.startswith("w_")}


def _inside(t, answer):
    start, end = answer["reply_timespan"]
    return start <= t <= end


def _live(turns, answers):
    """The spans the rollout reached: a span starting after the last turn was cut off and is skipped."""
    last = max((t for t, _ in turns), default=float("-inf"))
    return [a for a in answers if a["reply_timespan"][0] <= last]


def r_pauc(turns, answers, sim_judge, cfg=RewardConfig()):
    """Mean PAUC area (S = 4, omega 0.5, start 0.5) over the reached gold spans; 0 when none is reached.

    Inside a span each reply is judged alone against the span's gold answer; NO REPLY and exact repeats of a reply
    already seen in that span are not judged, a failed judgement (None) adds no point, and a span with no point
    scores 0.5 / 4 = 0.125.
    Example: span [1,3] holds A at t=2 scoring 4: x = 0.5*(2-1) = 0.5, area = 0.5*0.5 + (2-0.5)*4 = 6.25, PAUC =
    6.25 / (2*4) = 0.78125. Span [3,9] holds B (t=5, 3) and C (t=6, 4): x = 1, 1.5, area = 0.5*1 + 0.5*3 + 4.5*4
    = 20, PAUC = 20/24 = 0.833333. r_pauc = 0.807292.
    """
    spans, requests, owners = _live(turns, answers), [], []
    for j, ans in enumerate(spans):
        seen = []
        for t, text in turns:
            if _inside(t, ans) and not silent(text) and text not in seen:
                seen.append(text)
                requests.append((ans["question"], ans["content"], text))
                owners.append((j, t))
    points = [[] for _ in spans]
    for (j, t), score in zip(owners, judge_many(sim_judge, requests)):
        if score is not None:
            points[j].append((t, score))
    areas = [pauc_area(p, *ans["reply_timespan"], cfg.max_score, cfg.omega, cfg.start_score)
             for p, ans in zip(points, spans)]
    return sum(areas) / len(areas) if areas else 0.0


def _repetitions(turns, context_replies, rep_judge, questions=()):
    """The repetition walk of r_rep: ({turn index: True (repeat) | False | None (failed)} for every non-silent
    turn, the set of exact repeats)."""
    def question_at(t):
        return next((q for qt, q in sorted(questions, reverse=True) if qt <= t), None)

    seen, exact, asked, requests = list(context_replies), set(), [], []
    for i, (t, text) in enumerate(turns):
        if silent(text):
            continue
        if text in seen:
            exact.add(i)
            continue
        asked.append(i)
        requests.append((" ".join(seen), text, question_at(t)))
        seen.append(text)
    return {i: True for i in exact} | dict(zip(asked, judge_many(rep_judge, requests))), exact


def r_rep(turns, answers, context_replies, rep_judge, questions=(), recount_repeats=True):
    """Minus the mean repetition count (<= 0; 0 when nothing is counted).

    Walk the non-silent replies in time order with the context replies as already seen. An exact repeat of a seen
    reply counts 1; any other reply is judged by rep_judge(previous_text, reply, question), previous_text being
    every seen reply joined by single spaces and question the one in force at the reply's time (from `questions`,
    [(time, text)]; None without them), and counts 1 (repetition) or 0 (a failed judgement counts nothing). As in
    the released code, every 2nd or later reply inside one gold span is counted once more (so within-span
    follow-ups weigh double). The released code recounts only distinct replies, so there a paraphrase costs twice
    what the exact repeat costs that the benchmark counts as a duplicate; recount_repeats=True (the default here)
    recounts exact repeats too, so both cost the same; False is the released rule.
    Example: A -> 0, B -> 1, C -> 0, and C is the 2nd reply of span [3,9] -> 0 again: counts [0, 1, 0, 0],
    r_rep = -0.25 (the same under both rules: nothing is repeated exactly).
    """
    verdict, exact = _repetitions(turns, context_replies, rep_judge, questions)
    counts = [int(v) for v in verdict.values() if v is not None]
    for ans in _live(turns, answers):
        said = []
        for i, (t, text) in enumerate(turns):
            if not _inside(t, ans) or silent(text) or (text in said and not recount_repeats):
                continue
            said.append(text)
            if len(said) > 1 and verdict[i] is not None and (recount_repeats or i not in exact):
                counts.append(int(verdict[i]))
    return -sum(counts) / len(counts) if counts else 0.0


def r_out(turns, answers, mode="turns"):
    """Minus the share of out-of-span talk (<= 0).

    mode "turns" (released code): among the turns outside every gold span, silent ones included, the fraction
    that are not NO REPLY (0 if no turn is outside). mode "replies" (paper text): out-of-span replies divided by
    all replies (0 if there is no reply).
    Example: turns at t = 1..10 with spans [1,3] and [3,9] leave t = 10 outside; "NO REPLY" there gives 0, a reply
    there gives -1 ("turns") or -1/4 with four replies in all ("replies").
    """
    outside = [text for t, text in turns if not any(_inside(t, a) for a in answers)]
    n_out = sum(not silent(text) for text in outside)
    if mode == "replies":
        n_replies = sum(not silent(text) for _, text in turns)
        return -n_out / n_replies if n_replies else 0.0
    return -n_out / len(outside) if outside else 0.0


def r_pfx(turns, context_replies, prefix_chars=50):
    """Minus the fraction of all turns whose text shares a prefix of >= prefix_chars with an earlier turn or a
    context reply (<= 0; NO REPLY turns count in the denominator and never as copies).

    Example: B and the context reply share "The woman is brushing her teeth with " (37 chars), C and B share
    "The woman is brushing her teeth with a toothbrush" (49 chars): nothing reaches 50, r_pfx = 0. Had C been
    "The woman is brushing her teeth with a toothbrush. Now ..." (50+ shared), r_pfx = -1/8.
    """
    hits = 0
    for i, (_, text) in enumerate(turns):
        earlier = [x for _, x in turns[:i]] + list(context_replies)
        if not silent(text) and any(len(os.path.commonprefix([e, text])) >= prefix_chars for e in earlier):
            hits += 1
    return -hits / len(turns) if turns else 0.0


def turn_penalties(turns, answers, context_replies, rep_judge, questions=()):
    """Per turn (in time order) -1 if its reply repeats what was said before (exactly or by the judge, as in r_rep)
    or speaks outside every gold span, else 0: the turn-level signal of `train_rl.turn_advantages` (an opt-in
    experiment; the paper's reward is the trajectory total alone).
    Example: the rollout of docs/method.md section 3.4 -> [0, 0, 0, 0, -1, 0, 0, 0] (t5 repeats the context reply)."""
    turns = sorted(((float(t), text) for t, text in turns), key=lambda x: x[0])
    verdict, _ = _repetitions(turns, context_replies, rep_judge, questions)
    return [-float(bool(verdict.get(i)) or not silent(text) and not any(_inside(t, a) for a in answers))
            for i, (t, text) in enumerate(turns)]


def proactive_reward(turns, answers, context_replies, sim_judge, rep_judge, cfg=None, questions=()):
    """(total, {"r_pauc", "r_rep", "r_out", "r_pfx"}) of one rollout; the total weighs each term by cfg.weights().

    turns: [(time, text)] every assistant turn of the played window, NO REPLY included (sorted by time here).
    answers: [{"content", "reply_timespan": [start, end], "question"}] the gold answers of the window.
    context_replies: the ground-truth reply strings given as context before the window.
    sim_judge(question, gold, reply) -> 0..S | None; rep_judge(previous_text, new_reply, question) -> bool | None
    (a judge with a `.map` method gets all its requests of a term in one batch).
    cfg: a RewardConfig (weights, thresholds, out_mode); None -> RewardConfig().
    questions: [(time, text)] the dialogue's questions, for the repetition judge (which question a reply answers).
    """
    cfg = cfg or RewardConfig()
    for k, a in enumerate(answers):
        missing = [key for key in ("content", "reply_timespan", "question") if key not in a]
        if missing:
            raise ValueError(f"answer {k} lacks {missing}; each answer needs content, reply_timespan and question.")
    turns = sorted(((float(t), text) for t, text in turns), key=lambda x: x[0])
    comps = {"r_pauc": r_pauc(turns, answers, sim_judge, cfg),
             "r_rep": r_rep(turns, answers, context_replies, rep_judge, questions, cfg.recount_repeats),
             "r_out": r_out(turns, answers, cfg.out_mode),
             "r_pfx": r_pfx(turns, context_replies, cfg.prefix_chars)}
    total = sum(w * comps[term] for term, w in cfg.weights().items())
    return total, comps
