"""Does the RL reward prefer the gold? Replay every dialogue's gold answers through the reward and count penalties.

A reward whose best value is not the gold teaches something else. Each train dialogue of a ShapeWatch folder is
replayed as a rollout that answers every gold span on its first turn (the toy's 4 s turns) with the gold text and is silent
elsewhere, and scored by the reward train_rl.py uses (the rule judges, RewardConfig's defaults). Printed: how many
dialogues the replay loses reward on, per term, and how many gold answers repeat an earlier one word for word (the
paper's r_rep counts an exact repeat of anything said before, so when the same kind of object shows up twice, the
right answer to the second appearance is charged as a repetition).

    python -m bench.gold_reward --data data/toy
    python -m bench.gold_reward --data data/toy --keep data/toy_goldrep0   # a copy whose train split holds only
                                                                           # dialogues the replay is not charged on
"""
import argparse
import json
import os
import shutil

from mmduet2.dialogue import NO_REPLY
from mmduet2.rewards import RewardConfig, proactive_reward
from shapewatch import TURN, RuleJudge, rule_repetition_judge


def gold_turns(rec, turn_s=TURN):
    """[(time, text)] at every turn of the record: the gold answers of the spans that start in that turn, else NO
    REPLY (a turn at time t shows the frames of (t - turn_s, t])."""
    turns, t = [], turn_s
    while t <= rec["duration"] + 1e-9:
        said = [a["content"] for a in rec["answers"] if t - turn_s < a["reply_timespan"][0] <= t]
        turns.append((t, " ".join(said) if said else NO_REPLY))
        t += turn_s
    return turns


def replay(rec, cfg=RewardConfig()):
    """(total, components) of the gold replay of one train record under the toy's RL reward."""
    answers = [{"content": a["content"], "reply_timespan": a["reply_timespan"],
                "question": rec["questions"][a["question"]]["text"]} for a in rec["answers"]]
    questions = [(q["time"], q["text"]) for q in rec["questions"]]
    return proactive_reward(gold_turns(rec), answers, [], RuleJudge(cfg.max_score, precision=True),
                            rule_repetition_judge, cfg, questions)


def exact_repeats(rec):
    """How many gold answers of the record repeat an earlier one word for word."""
    seen, n = set(), 0
    for a in rec["answers"]:
        n += a["content"] in seen
        seen.add(a["content"])
    return n


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default="data/toy", help="a ShapeWatch folder (train.jsonl, videos/)")
    p.add_argument("--keep", help="write a copy of --data here whose train.jsonl keeps only the dialogues the "
                                  "replay loses nothing on through r_rep (the other files are copied, videos linked)")
    args = p.parse_args()
    records = [json.loads(line) for line in open(os.path.join(args.data, "train.jsonl"))]
    scored = [(rec, *replay(rec)) for rec in records if rec["answers"]]
    n = len(scored)
    print(f"{args.data}/train.jsonl: {len(records)} records, {n} with gold answers, replayed")
    for term in scored[0][2]:
        values = [c[term] for _, _, c in scored]
        hit = [v for v in values if v < 0]
        print(f"  {term}: mean {sum(values) / n:.3f}" + ("" if term == "r_pauc" else f", below 0 on {len(hit)} of "
                                                         f"{n} dialogues"))
    answers = sum(len(rec["answers"]) for rec, *_ in scored)
    rep = sum(exact_repeats(rec) for rec, *_ in scored)
    with_rep = sum(exact_repeats(rec) > 0 for rec, *_ in scored)
    print(f"  gold answers repeating an earlier one word for word: {rep} of {answers}, in {with_rep} of {n} dialogues")
    print(f"  mean reward of the replay: {sum(total for _, total, _ in scored) / n:.3f}")
    if args.keep:
        charged = {rec["id"] for rec, _, c in scored if c["r_rep"] < 0}
        os.makedirs(args.keep, exist_ok=True)
        for name in os.listdir(args.data):
            src, dst = os.path.join(os.path.abspath(args.data), name), os.path.join(args.keep, name)
            if name == "train.jsonl" or os.path.lexists(dst):
                continue
            os.symlink(src, dst) if os.path.isdir(src) else shutil.copy(src, dst)
        kept = [rec for rec in records if rec["id"] not in charged]
        tmp = os.path.join(args.keep, "train.jsonl.tmp")
        with open(tmp, "w") as f:
            f.writelines(json.dumps(rec) + "\n" for rec in kept)
        os.replace(tmp, os.path.join(args.keep, "train.jsonl"))
        print(f"  wrote {args.keep}: train.jsonl keeps {len(kept)} of {len(records)} records")


if __name__ == "__main__":
    main()
