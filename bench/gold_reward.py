"""Does the RL reward prefer the gold? Replay every dialogue's gold answers through the reward and count penalties.

A reward whose best value is not the gold teaches something else. Each dialogue of a ShapeWatch split is replayed
as a rollout that says every gold answer on the first turn of its span (the toy's 4 s turns; answers whose spans
start in the same turn are said together, as one reply) and is silent elsewhere, and is scored by the reward
train_rl.py uses (the rule judges, RewardConfig's defaults), over the whole video with no context replies (RL
scores 20-32 s windows whose earlier gold replies count as already said, so an episode can be charged more).
Printed: per term its mean and on how many dialogues it is below 0, and how many gold answers repeat an earlier
one word for word, split into those naming an object (the same kind of object shown up again: "Red circle
appeared." twice) and those naming none (v7's "Nothing yet.", the immediate answer of two questions). The paper's
r_rep counts every exact repeat of anything said before, and the rule repetition judge counts a reply whose objects
were all named before, so both charge such right answers: on v7, 425 of 1,084 train dialogues; ShapeWatch v8 draws
its scenes so that no gold answer repeats another, and every term reads 0 on every dialogue.

    python -m bench.gold_reward --data data/toy
    python -m bench.gold_reward --data data/toy --keep data/toy_goldrep0   # a copy whose train split keeps only
                                                                           # the dialogues r_rep does not charge
"""
import argparse
import json
import os
import shutil
import sys

import train_rl
from mmduet2.checkpoint import atomic_path
from mmduet2.dialogue import NO_REPLY
from mmduet2.rewards import proactive_reward
from shapewatch import TURN, parse_objects

CFG = train_rl.RLConfig()               # train_rl.py's defaults: its reward weights and its rule judges
JUDGES = train_rl.make_judges(CFG)


def gold_turns(rec, turn_s=TURN):
    """[(time, text)] at every turn of the record: the gold answers of the spans that start in that turn, else NO
    REPLY (a turn at time t shows the frames of (t - turn_s, t])."""
    turns, t = [], turn_s
    while t <= rec["duration"] + 1e-9:
        said = [a["content"] for a in rec["answers"] if t - turn_s < a["reply_timespan"][0] <= t]
        turns.append((t, " ".join(said) if said else NO_REPLY))
        t += turn_s
    return turns


def replay(rec, turn_s=TURN):
    """(total, components) of the gold replay of one record under the toy's RL reward."""
    questions = [(q["time"], q["text"]) for q in rec["questions"]]
    return proactive_reward(gold_turns(rec, turn_s), train_rl.gold_answers(rec), [], JUDGES.sim, JUDGES.rep,
                            CFG.reward, questions)


def exact_repeats(rec):
    """The gold answers of the record that repeat an earlier one word for word, in order."""
    seen, repeats = set(), []
    for a in rec["answers"]:
        if a["content"] in seen:
            repeats.append(a["content"])
        seen.add(a["content"])
    return repeats


def keep_uncharged(data, out, records, charged):
    """Write `out`: `data` with train.jsonl cut to the records not in `charged` and meta.json saying so (videos
    linked, other files copied), built in a temporary folder that replaces `out` only when complete."""
    src, dst = os.path.realpath(data), os.path.realpath(out)
    if dst == src or dst.startswith(src + os.sep):
        sys.exit(f"--keep {out} is --data {data} or inside it; write the copy to a folder of its own.")
    kept = [rec for rec in records if rec["id"] not in charged]
    with atomic_path(out) as tmp:
        os.makedirs(tmp)
        for name in os.listdir(src):
            if name in ("train.jsonl", "meta.json"):
                continue
            path = os.path.join(src, name)
            if os.path.isdir(path):
                os.symlink(os.path.relpath(path, dst), os.path.join(tmp, name))  # relative to the link
            else:
                shutil.copy(path, os.path.join(tmp, name))
        with open(os.path.join(tmp, "train.jsonl"), "w") as f:
            f.writelines(json.dumps(rec) + "\n" for rec in kept)
        meta = json.load(open(os.path.join(src, "meta.json"))) if os.path.exists(os.path.join(src, "meta.json")) else {}
        meta.setdefault("sizes", {})["train"] = len(kept)
        meta["kept_by"] = f"bench.gold_reward: the train records of {data} whose gold replay r_rep does not charge"
        meta.pop("stats", None)  # the generator's counts describe the full split
        with open(os.path.join(tmp, "meta.json"), "w") as f:  # last, as the generator writes it
            json.dump(meta, f, indent=1)
    return len(kept)


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default="data/toy", help="a ShapeWatch folder (train.jsonl, val.jsonl, videos/)")
    p.add_argument("--split", default="train", choices=("train", "val", "test"), help="which split to replay")
    p.add_argument("--turn-s", type=float, default=TURN, help="seconds per turn of the replay (the toy's: 4)")
    p.add_argument("--keep", help="write a copy of --data here whose train.jsonl keeps only the records whose gold "
                                  "replay r_rep does not charge (videos linked, the other files copied)")
    args = p.parse_args()
    path = os.path.join(args.data, f"{args.split}.jsonl")
    if not os.path.exists(path):
        sys.exit(f"{path} does not exist: point --data at a ShapeWatch folder (python shapewatch.py --out DIR).")
    if args.keep and args.split != "train":
        sys.exit("--keep cuts the train split: run it with --split train.")
    records = [json.loads(line) for line in open(path)]
    scored = [(rec, *replay(rec, turn_s=args.turn_s)) for rec in records if rec["answers"]]
    n = len(scored)
    if not n:
        sys.exit(f"{path}: no record has gold answers, so there is nothing to replay.")
    print(f"{path}: {len(records)} records, {n} with gold answers, replayed at {args.turn_s:g} s turns")
    for term in scored[0][2]:
        values = [c[term] for _, _, c in scored]
        hit = sum(v < 0 for v in values)
        print(f"  {term}: mean {sum(values) / n:.3f}" + ("" if term == "r_pauc" else f", below 0 on {hit} of {n}"))
    answers = sum(len(rec["answers"]) for rec, *_ in scored)
    repeats = [(rec["id"], text) for rec, *_ in scored for text in exact_repeats(rec)]
    blank = sum(not parse_objects(text) for _, text in repeats)
    print(f"  gold answers repeating an earlier one word for word: {len(repeats)} of {answers}, in "
          f"{len({i for i, _ in repeats})} of {n} dialogues ({len(repeats) - blank} naming an object, {blank} none)")
    print(f"  mean reward of the replay: {sum(total for _, total, _ in scored) / n:.3f}")
    if args.keep:
        charged = {rec["id"] for rec, _, c in scored if c["r_rep"] < 0}
        kept = keep_uncharged(args.data, args.keep, records, charged)
        print(f"  wrote {args.keep}: train.jsonl keeps {kept} of {len(records)} records")


if __name__ == "__main__":
    main()
