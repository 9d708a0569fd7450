"""When does a checkpoint speak inside the gold spans? Greedy streams over a ProactiveVideoQA split, turn by turn.

Prints, per checkpoint, three tables behind the README's "What RL changed, span by span":
  1. per gold span, which of its turns carry a reply (R) or are silent (.), counted by pattern: `.R` is a late
     answer, `R.` an early one, `RR` an answer followed by another (a duplicate when the text is the same);
     and how many spans get no reply, split by whether the model spoke on the turn just before or after it;
  2. the mean probability of `NO REPLY` (its first token) on each kind of turn: a span's first turn, a later
     turn before any reply in that span, a later turn after one, and turns outside every span. A model that
     remembers what it said puts a high probability on silence after a reply;
  3. how much of the PAUC is timing: the PAUC of the streamed replies, of the same replies moved to the first
     turn of their span (what perfect timing alone would add), and of the gold answers given on every span's
     first turn and on its last turn (the ceiling of the benchmark at this frame rate, and where a model that
     answers at the span end, as SFT data teaches, would sit).

    python -m bench.span_turns --checkpoint sft=runs/toy/sft --checkpoint rl=runs/toy/rl
"""
import argparse
import collections
import json
import os
import statistics

import torch

from mmduet2.checkpoint import load_checkpoint
from mmduet2.dialogue import NO_REPLY
from mmduet2.metrics import proactive_pauc
from mmduet2.stream import StreamConfig, Streamer
from mmduet2.video import read_frames
from shapewatch import RuleJudge


class ProbeStreamer(Streamer):
    """A Streamer that also records row 0's probability of starting its answer with `NO REPLY`'s first token."""

    def _generate(self, logits, active):
        self.p_silent = float(logits[0].float().softmax(-1)[self.tok.encode(NO_REPLY)[0]])
        return super()._generate(logits, active)


@torch.no_grad()
def stream_turns(model, tok, frames, question, cfg):
    """[(time, reply or None, P(NO REPLY))] for every turn of one greedy stream."""
    streamer, turns = ProbeStreamer(model, tok, cfg), []
    for k in range(0, len(frames), cfg.frames_per_turn):
        reply = streamer.step(frames[k:k + cfg.frames_per_turn], question if k == 0 else None)[0]
        turns.append((streamer.time, reply, streamer.p_silent))
    return turns


def span_report(records, turns_of):
    """Counters of span patterns and of missed spans, and (P(NO REPLY), silent) per turn for each kind of turn."""
    patterns, missed, p_silent = collections.Counter(), collections.Counter(), collections.defaultdict(list)
    for rec in records:
        turns = turns_of[rec["question_id"]]
        spans = [a["reply_timespan"] for a in rec["answer"]]
        for start, end in spans:
            inside = [(t, r, p) for t, r, p in turns if start <= t <= end]
            patterns[(len(inside), "".join(".R"[r is not None] for _, r, _ in inside))] += 1
            replied = False
            for j, (_, r, p) in enumerate(inside):
                kind = "first turn" if j == 0 else "later, after a reply" if replied else "later, no reply yet"
                p_silent[kind].append((p, r is None))
                replied |= r is not None
            if not replied:  # did it speak on the turn just before or just after the span?
                before = any(r is not None for t, r, _ in [x for x in turns if x[0] < start][-1:])
                after = any(r is not None for t, r, _ in [x for x in turns if x[0] > end][:1])
                missed[{(True, False): "turn before", (False, True): "turn after", (True, True): "both"}
                       .get((before, after), "neither")] += 1
        for t, r, p in turns:
            if not any(s <= t <= e for s, e in spans):
                p_silent["outside every span"].append((p, r is None))
    return patterns, missed, p_silent


def timing_headroom(records, turns_of, judge):
    """PAUC (omega 0.5) of: the streamed replies; each span's first reply moved to the span's first turn; the gold
    answer on every span's first turn; and on its last turn. Spans holding no turn get no reply in any of them."""
    streamed, moved, first, last = {}, {}, {}, {}
    for rec in records:
        qid, turns = rec["question_id"], turns_of[rec["question_id"]]
        streamed[qid] = [{"time": t, "content": r} for t, r, _ in turns if r is not None]
        moved[qid], first[qid], last[qid] = [], [], []
        for ans in rec["answer"]:
            start, end = ans["reply_timespan"]
            inside = [(t, r) for t, r, _ in turns if start <= t <= end]
            if not inside:
                continue
            said = [r for _, r in inside if r is not None]
            if said:
                moved[qid].append({"time": inside[0][0], "content": said[0]})
            first[qid].append({"time": inside[0][0], "content": ans["content"]})
            last[qid].append({"time": inside[-1][0], "content": ans["content"]})
    return {name: proactive_pauc(records, preds, judge)["pauc"] for name, preds in
            (("streamed", streamed), ("moved to first turn", moved), ("gold on first turn", first),
             ("gold on last turn", last))}


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", action="append", help="NAME=DIR, repeatable (default: the toy's sft and rl)")
    p.add_argument("--gold", default="data/toy/test_proactive.json", help="ProactiveVideoQA-format JSON")
    p.add_argument("--video-root", default="data/toy", help="folder the records' video paths are relative to")
    p.add_argument("--frame-interval", type=float, default=2.0, help="seconds between frames (the toy's 2 s)")
    p.add_argument("--frames-per-turn", type=int, default=2)
    args = p.parse_args()
    checkpoints = dict(c.split("=", 1) for c in args.checkpoint or ["sft=runs/toy/sft", "rl=runs/toy/rl"])
    with open(args.gold) as f:
        records = json.load(f)
    cfg, judge = StreamConfig(args.frames_per_turn, args.frame_interval), RuleJudge()
    videos = {r["video"]: read_frames(os.path.join(args.video_root, r["video"]), cfg.frame_interval)[0]
              for r in records}
    for name, path in checkpoints.items():
        model, tok = load_checkpoint(path)
        turns_of = {r["question_id"]: stream_turns(model, tok, videos[r["video"]], r["conversation"][0]["content"],
                                                   cfg) for r in records}
        patterns, missed, p_silent = span_report(records, turns_of)
        print(f"== {name} ({path}): {sum(patterns.values())} gold spans")
        for n in sorted({n for n, _ in patterns}):
            row = sorted(((pat, c) for (m, pat), c in patterns.items() if m == n), key=lambda x: -x[1])
            print(f"  spans of {n} turn(s): " + "  ".join(f"{pat or '-'} {c}" for pat, c in row))
        print(f"  spans with no reply: {sum(missed.values())} ({dict(missed)})")
        for kind in ("first turn", "later, no reply yet", "later, after a reply", "outside every span"):
            ps = p_silent[kind]
            if not ps:
                continue
            print(f"  P(NO REPLY) {kind:<22} {statistics.mean(q for q, _ in ps):.2f} over {len(ps)} turns, "
                  f"silent {sum(s for _, s in ps) / len(ps):.0%}")
        print("  PAUC " + ", ".join(f"{k} {v:.2f}" for k, v in timing_headroom(records, turns_of, judge).items()))


if __name__ == "__main__":
    main()
