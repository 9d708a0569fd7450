"""Evaluation on ProactiveVideoQA-format records: stream every video through the model, then score with PAUC.

Used by eval.py (the command line) and by train_rl.py (validation, which picks the kept checkpoint). Videos are
streamed `batch_size` at a time as the rows of one Streamer batch, each row watching its own video; greedy
decoding gives a row the tokens it would get alone (tested). Predictions are appended to a JSONL file one
example at a time, with a provenance file beside it (the checkpoint's identity and the stream settings), so an
interrupted run resumes, and only with the same checkpoint and settings. Every gold turn of every record is
scored: a video that could not be decoded has no predictions and scores 0.25 per gold turn, as in the
benchmark's scorer, and the failures are counted in the metrics. Each video is streamed to its end by default;
`rounds="benchmark"` stops after the last gold reply span, as the benchmark's released inference does
(`benchmark_frames`).
"""
import itertools
import json
import math
import os
import statistics

import torch

from .checkpoint import write_json
from .dialogue import silent
from .metrics import proactive_pauc
from .stream import Streamer
from .video import VideoError, iter_frames, probe_video


@torch.no_grad()
def stream_videos(model, tok, videos, cfg):
    """videos: [(frames, question asked at time 0)], frames any iterable (a list, or video.iter_frames decoding as
    the stream reaches them). Returns per video every turn as (time, reply or None if silent), or the VideoError
    that stopped it."""
    rows = [Streamer(model, tok, cfg) for _ in videos]
    batch = Streamer.concat(rows) if len(rows) > 1 else rows[0]
    sources, turns = [iter(frames) for frames, _ in videos], [[] for _ in videos]
    for k in itertools.count():
        frames = []
        for i, src in enumerate(sources):
            try:  # a row whose video has ended (or failed) sits the remaining turns out
                chunk = [] if isinstance(turns[i], VideoError) else list(itertools.islice(src, cfg.frames_per_turn))
            except VideoError as e:
                turns[i], chunk = e, []
            frames.append(chunk or None)
        if all(f is None for f in frames):
            return turns
        answers = batch.step_rows(frames, [q if k == 0 else None for _, q in videos], [None] * len(videos))
        for i, fr in enumerate(frames):
            if fr is not None:
                turns[i].append((batch.row_time(i), None if silent(answers[i]) else answers[i]))


def benchmark_frames(rec, interval):
    """Frames ProactiveVideoQA's released streaming inference plays (docs/method.md section 5): it stops after the
    last gold reply span, max(1, min(int(duration * fps), ceil(min(duration, last reply end) * fps))) at
    fps = 1 / interval (float slack as in video.py). Nothing inside a span changes; with 2 frames a turn the last
    turn may hold one. Example: duration 40, last span [10, 15], interval 2 -> 8 frames (up to 16 s)."""
    fps, duration = 1 / interval, rec["duration"]
    end = max((a["reply_timespan"][1] for a in rec["answer"]), default=duration)
    return max(1, min(int(duration * fps + 1e-6), math.ceil(min(duration, end) * fps - 1e-6)))


def load_predictions(path):
    """{question_id: {"replies": [{time, content}], "turn_times": [...] or None}} from a predictions JSONL."""
    preds = {}
    with open(path) as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                preds[row["question_id"]] = {"replies": list(row["replies"]), "turn_times": row.get("turn_times")}
            except (json.JSONDecodeError, KeyError, TypeError):
                raise ValueError(f"{path} line {n}: expected {{\"question_id\": ..., \"replies\": [...]}}; "
                                 "delete the line (or the file) to predict that example again.") from None
    return preds


def _check_provenance(pred_path, provenance, fresh):
    """Resume only predictions made by the same checkpoint with the same stream settings."""
    meta_path = pred_path + ".meta.json"
    if fresh or not os.path.exists(pred_path):
        for p in (pred_path, meta_path):
            if os.path.exists(p):
                os.remove(p)
        write_json(meta_path, provenance, indent=1)
        return
    saved = json.load(open(meta_path)) if os.path.exists(meta_path) else {}
    diff = [k for k in {**saved, **provenance} if saved.get(k) != provenance.get(k)]  # an opt-in on in one only too
    if diff:
        raise ValueError(f"{pred_path} was written with other settings ({', '.join(f'{k}: {saved.get(k)!r}' for k in diff)}"
                         f"; now {', '.join(repr(provenance.get(k)) for k in diff)}): pass --fresh to predict again, or "
                         "another --out.")


def predict_records(model, tok, records, video_root, cfg, pred_path=None, log=print, batch_size=16,
                    provenance=None, fresh=False, rounds="full"):
    """Predict every record, resuming from `pred_path` when its provenance matches. `rounds`: "full" streams each
    video to its end, "benchmark" stops after its last gold reply span (`benchmark_frames`). Returns (preds, failed):
    preds {question_id: {"replies", "turn_times"}}, failed [(question_id, error)] for videos that could not be read."""
    if pred_path:  # the opt-in settings enter the provenance only when on, so older files still resume
        optional = {**({"window": cfg.window, "text_budget": cfg.text_budget} if cfg.window else {}),
                    **({"rounds": rounds} if rounds != "full" else {})}
        _check_provenance(pred_path, {"frame_interval": cfg.frame_interval, "frames_per_turn": cfg.frames_per_turn,
                                      "max_new_tokens": cfg.max_new_tokens, **optional, **(provenance or {})}, fresh)
    preds = load_predictions(pred_path) if pred_path and os.path.exists(pred_path) else {}
    todo, failed = [r for r in records if r["question_id"] not in preds], []
    out = open(pred_path, "a") if pred_path else None
    for k in range(0, len(todo), batch_size):
        videos, recs = [], []
        for rec in todo[k:k + batch_size]:
            path = os.path.join(video_root, rec["video"])
            try:  # checked before streaming, decoded as the stream reaches each frame
                probe_video(path, rec.get("fps"))
                frames = (f for f, _ in iter_frames(path, cfg.frame_interval, rec.get("fps")))
                if rounds == "benchmark":
                    frames = itertools.islice(frames, benchmark_frames(rec, cfg.frame_interval))
                videos.append((frames, rec["conversation"][0]["content"]))
                recs.append(rec)
            except VideoError as e:
                failed.append((rec["question_id"], str(e)))
        for rec, turns in zip(recs, stream_videos(model, tok, videos, cfg) if videos else []):
            if isinstance(turns, VideoError):
                failed.append((rec["question_id"], str(turns)))
                continue
            row = {"replies": [{"time": t, "content": r} for t, r in turns if r is not None],
                   "turn_times": [t for t, _ in turns]}
            preds[rec["question_id"]] = row
            if out:
                out.write(json.dumps({"question_id": rec["question_id"], **row}) + "\n")
                out.flush()
        if log and len(todo) > batch_size:
            log(f"  predicted {min(k + batch_size, len(todo))}/{len(todo)}")
    if out:
        out.close()
    return preds, failed


def reply_delays(spans, turns):
    """Seconds from the start of each gold reply span (the evidence appearing) to the first reply inside it, for
    the spans holding one. spans: [[start, end]]; turns: [(time, text)], silent ones skipped (eval and RL log).
    Example: spans [[2, 6], [10, 12]], turns [(4, "A red circle."), (6, "NO REPLY"), (8, "Again.")] -> [2]."""
    times = [t for t, text in turns if not silent(text)]
    delays = []
    for a, b in spans:
        inside = [t for t in times if a <= t <= b]
        if inside:
            delays.append(min(inside) - a)
    return delays


def turn_stats(records, preds):
    """From the turn grid of each stream: second and later replies per gold span holding >= 2 turns, and how
    often the model stays silent on the turn after an in-span reply when that turn is still in the span.
    Returns None when the predictions carry no turn times (scored from a file written elsewhere)."""
    if any(p["turn_times"] is None for p in preds.values()):
        return None
    extra, multi, after, silent_after = 0, 0, 0, 0
    for rec in records:
        p = preds.get(rec["question_id"])
        if p is None:  # a failed video: no turns to count
            continue
        said = {r["time"] for r in p["replies"] if not silent(r["content"])}
        for ans in rec["answer"]:
            a, b = ans["reply_timespan"]
            inside = [t for t in p["turn_times"] if a <= t <= b]
            if len(inside) >= 2:
                multi += 1
                extra += max(0, sum(t in said for t in inside) - 1)
            for t, nxt in zip(inside, inside[1:]):
                if t in said:
                    after += 1
                    silent_after += nxt not in said
    return {"second_replies_per_multiturn_span": extra / multi if multi else 0.0, "multiturn_spans": multi,
            "silent_after_reply": silent_after / after if after else None, "turns_after_reply": after}


def score(records, preds, judge, failed=()):
    """PAUC (omega 0.5, 0, 1), duplicates with their counts, reply counts and timing, overall and per task.
    Every record is scored; one without predictions (a failed video) said nothing."""
    replies = {q: [r for r in p["replies"] if not silent(r["content"])] for q, p in preds.items()}
    res = proactive_pauc(records, replies, judge, omega=0.5)
    delays = [d for rec in records
              for d in reply_delays([a["reply_timespan"] for a in rec["answer"]],
                                    [(x["time"], x["content"]) for x in replies.get(rec["question_id"], [])])]
    n_spans = sum(len(r["answer"]) for r in records)
    outside = sum(not any(a["reply_timespan"][0] <= x["time"] <= a["reply_timespan"][1] for a in rec["answer"])
                  for rec in records for x in replies.get(rec["question_id"], []))
    n_replies = sum(len(replies.get(r["question_id"], [])) for r in records)
    n_after_first = sum(max(0, t["n_replies"] - 1) for t in res["turns"])
    metrics = {"n": len(records), "failed_videos": len(failed), "pauc": res["pauc"],
               "pauc_omega0": res["pauc_omega0"], "pauc_omega1": res["pauc_omega1"],
               "duplicate_ratio": res["duplicate_ratio"], "duplicates": sum(t["n_duplicates"] for t in res["turns"]),
               "replies_after_first": n_after_first, "judge_failures": res["judge_failures"],
               "reply_turns": n_replies / len(records), "replies_outside": outside / len(records),
               "median_reply_delay": statistics.median(delays) if delays else None,
               "answered_spans": len(delays) / max(1, n_spans), **(turn_stats(records, preds) or {})}
    task_of = {r["question_id"]: r.get("task") for r in records}
    tasks = sorted({t for t in task_of.values() if t})
    if len(tasks) > 1:  # from the per-turn values already judged, not a second round of judging
        metrics["per_task"] = {t: 100 * statistics.mean(x["pauc"] for x in res["turns"]
                                                        if task_of[x["question_id"]] == t) for t in tasks}
    return metrics
