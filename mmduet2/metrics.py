"""PAUC, the ProactiveVideoQA metric (docs/method.md section 4), and the reply duplicate proportion reported beside it.

Each gold answer turn has a reply span [reply_start, reply_end] (= related span plus one extra second). The
model's quality inside the span is a step function of time: it starts at 0.5 and jumps to the judge's score of
everything said so far each time a new reply arrives. PAUC is the area under that step function over the span,
normalised by L * S; omega in [0, 1] compresses the time axis towards the span start (omega = 1 ignores timing,
omega = 0 counts every second of delay). `pauc_area` is that area alone and is shared with the RL reward.

Interpretation choices where docs/method.md leaves room (all documented in `proactive_pauc`):
  - pruning of extra-second points compares against the last score at or before related_end; when no point lies
    there, nothing is pruned (there is no in-span score to protect);
  - a prediction equal to "NO REPLY" (or empty) is silence and is ignored, though predictions should hold
    non-silent replies only;
  - duplicate_ratio is pooled over all gold turns: (sum of duplicate replies) / (sum of replies after the first).
"""
from .dialogue import silent
from .judges import judge_many


def pauc_area(points, reply_start, reply_end, max_score, omega, start_score=0.5):
    """Normalised area under the step function of one span, in [0, 1].

    points: [(time, score)] of the scored replies in the span (absolute times, reply_start <= time <= reply_end).
    No points: start_score / max_score (the "said nothing" value: 0.25 on the benchmark, 0.125 in the reward).
    A zero-length span with points scores 0.

    Worked example (the check values of docs/method.md section 4): span [0, 10], S = 2, points (2, 1) and (5, 2).
    With omega 0.5 the offsets compress to x = 1 and 2.5: area = 0.5*1 + (2.5-1)*1 + (10-2.5)*2 = 17, PAUC =
    17 / (10*2) = 0.85 (omega 0 -> 0.70, omega 1 -> 1.00).
    """
    if not points:
        return start_score / max_score
    length = reply_end - reply_start
    if length <= 0:
        return 0.0
    area, prev_x, prev_y = 0.0, 0.0, start_score
    for t, score in sorted(points, key=lambda p: p[0]):
        x = (1 - omega) * (t - reply_start)
        area += (x - prev_x) * prev_y
        prev_x, prev_y = x, score
    area += (length - prev_x) * prev_y
    return area / (length * max_score)


def prune_extra_second(points, related_end):
    """Drop points after related_end (in the extra second) scoring below the last score at/before related_end.

    Example: related_end 8, points [(6, 2), (9, 1)] -> [(6, 2)]: a worse answer given in the grace second after the
    event does not lower the curve. [(9, 0)] alone is kept (one point; nothing to compare with).
    """
    if len(points) <= 1:
        return list(points)
    kept, remembered = [], None
    for t, score in sorted(points, key=lambda p: p[0]):
        if t <= related_end:
            remembered = score
        elif remembered is not None and score < remembered:
            continue
        kept.append((t, score))
    return kept


def proactive_pauc(gold_records, predictions, judge, omega=0.5, max_score=2):
    """PAUC over ProactiveVideoQA records, plus omega 0 and 1 from the same judgements, and duplicates.

    gold_records: ProactiveVideoQA records (question = first user turn's content). predictions:
    {question_id: [{"time", "content"}]} (non-silent replies; a missing question_id means the model said
    nothing). judge(question, gold_answer, prediction_text) -> 0..max_score, or None for a judge failure (which
    adds no point). Every distinct request is judged once per call (all omegas share the judgements).

    Per gold turn: the predictions with reply_start <= time <= reply_end, in time order, build an accumulated
    list of distinct texts; each new text adds the point (time, judge(accumulated texts joined by " ")); exact
    duplicates add nothing. Points are pruned by `prune_extra_second`, then scored by `pauc_area`.

    Returns {"pauc", "pauc_omega0", "pauc_omega1" (means over all gold turns, times 100), "omega",
    "duplicate_ratio" (pooled: duplicates / replies after each turn's first, over all turns; 0 if none),
    "n_turns", "judge_failures", "turns": [{"question_id", "turn", "pauc", "pauc_omega0", "pauc_omega1",
    "points", "n_replies", "n_duplicates"}] with per-turn values in [0, 1]}.
    """
    spans, requests = [], []
    for rec in gold_records:
        users = [c for c in rec.get("conversation", []) if c.get("role") == "user"]
        if not users:
            raise ValueError(f"record {rec.get('question_id')!r} has no user turn to take the question from; "
                             "its conversation must start with the question.")
        question = users[0]["content"]
        preds = sorted(predictions.get(rec["question_id"], []), key=lambda p: p["time"])
        for i, ans in enumerate(rec["answer"]):
            start, end = ans["reply_timespan"]
            inside = [(p["time"], p["content"]) for p in preds
                      if start <= p["time"] <= end and not silent(p["content"])]
            accumulated, asks = [], []
            for t, text in inside:
                if text in accumulated:
                    continue
                accumulated.append(text)
                asks.append((t, len(requests)))
                requests.append((question, ans["content"], " ".join(accumulated)))
            spans.append((rec["question_id"], i, ans, asks, len(inside), len(inside) - len(accumulated)))

    # one judgement per distinct request, shared by every omega
    distinct = list(dict.fromkeys(requests))
    verdicts = dict(zip(distinct, judge_many(judge, distinct)))
    failures = sum(verdicts[r] is None for r in requests)

    turns, n_dups, n_after_first = [], 0, 0
    for qid, i, ans, asks, n_replies, dups in spans:
        points = [(t, verdicts[requests[k]]) for t, k in asks if verdicts[requests[k]] is not None]
        points = prune_extra_second(points, ans["related_timespan"][1])
        start, end = ans["reply_timespan"]
        row = {"question_id": qid, "turn": i, "points": points, "n_replies": n_replies, "n_duplicates": dups}
        for key, w in (("pauc", omega), ("pauc_omega0", 0.0), ("pauc_omega1", 1.0)):
            row[key] = pauc_area(points, start, end, max_score, w)
        turns.append(row)
        n_dups += dups
        n_after_first += max(0, n_replies - 1)

    def mean100(key):
        return 100.0 * sum(r[key] for r in turns) / len(turns) if turns else 0.0

    return {"pauc": mean100("pauc"), "pauc_omega0": mean100("pauc_omega0"), "pauc_omega1": mean100("pauc_omega1"),
            "omega": omega, "duplicate_ratio": n_dups / n_after_first if n_after_first else 0.0,
            "n_turns": len(turns), "judge_failures": failures, "turns": turns}
