"""Evaluation on ProactiveVideoQA-format records: stream every video through the model, then score with PAUC.

Used by eval.py (the command line) and by train_rl.py (periodic PAUC on the val split). Predictions are
appended to a JSONL file one example at a time, so an interrupted run resumes where it stopped; a video that
cannot be decoded is skipped, reported at the end, and never silently dropped from the counts.
"""
import json
import os
import statistics

import torch

from .metrics import proactive_pauc
from .stream import Streamer
from .video import VideoError, read_frames


@torch.no_grad()
def predict(model, tok, frames, question, cfg):
    """Stream `frames` with `question` asked at time 0; returns the non-silent replies as {time, content}."""
    streamer = Streamer(model, tok, cfg)
    replies = []
    for k in range(0, len(frames), cfg.frames_per_turn):
        reply = streamer.step(frames[k:k + cfg.frames_per_turn], question if k == 0 else None)[0]
        if reply is not None:
            replies.append({"time": streamer.time, "content": reply})
    return replies


def load_predictions(path):
    """{question_id: replies} from a predictions JSONL (the format eval.py writes)."""
    preds = {}
    with open(path) as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                preds[row["question_id"]] = row["replies"]
            except (json.JSONDecodeError, KeyError, TypeError):
                raise ValueError(f"{path} line {n}: expected {{\"question_id\": ..., \"replies\": [...]}}; "
                                 "delete the line (or the file) to predict that example again.") from None
    return preds


def predict_records(model, tok, records, video_root, cfg, pred_path=None, log=print):
    """Predict every record, resuming from `pred_path` when it already holds some. Returns (preds, failed)."""
    preds = load_predictions(pred_path) if pred_path and os.path.exists(pred_path) else {}
    failed = []
    out = open(pred_path, "a") if pred_path else None
    for n, rec in enumerate(records):
        if rec["question_id"] in preds:
            continue
        try:
            frames, _ = read_frames(os.path.join(video_root, rec["video"]), cfg.frame_interval)
        except VideoError as e:
            failed.append((rec["question_id"], str(e)))
            continue
        preds[rec["question_id"]] = predict(model, tok, frames, rec["conversation"][0]["content"], cfg)
        if out:
            out.write(json.dumps({"question_id": rec["question_id"], "replies": preds[rec["question_id"]]}) + "\n")
            out.flush()
        if log and (n + 1) % 20 == 0:
            log(f"  predicted {n + 1}/{len(records)}")
    if out:
        out.close()
    return preds, failed


def reply_delays(records, preds):
    """Seconds from the start of each gold reply span (the evidence appearing) to the first reply inside it."""
    delays = []
    for rec in records:
        times = [p["time"] for p in preds.get(rec["question_id"], [])]
        for ans in rec["answer"]:
            a, b = ans["reply_timespan"]
            inside = [t for t in times if a <= t <= b]
            if inside:
                delays.append(min(inside) - a)
    return delays


def score(records, preds, judge):
    """PAUC (omega 0.5, 0, 1), duplicates, reply turns and reply delay, overall and per task."""
    records = [r for r in records if r["question_id"] in preds]
    if not records:
        return {"n": 0}
    res = proactive_pauc(records, preds, judge, omega=0.5)
    delays = reply_delays(records, preds)
    metrics = {"n": len(records), "pauc": res["pauc"], "pauc_omega0": res["pauc_omega0"],
               "pauc_omega1": res["pauc_omega1"], "duplicate_ratio": res["duplicate_ratio"],
               "reply_turns": sum(len(preds[r["question_id"]]) for r in records) / len(records),
               "median_reply_delay": statistics.median(delays) if delays else None,
               "answered_spans": len(delays) / max(1, sum(len(r["answer"]) for r in records))}
    task_of = {r["question_id"]: r.get("task") for r in records}
    tasks = sorted({t for t in task_of.values() if t})
    if len(tasks) > 1:  # from the per-turn values already judged, not a second round of judging
        metrics["per_task"] = {t: 100 * statistics.mean(x["pauc"] for x in res["turns"]
                                                        if task_of[x["question_id"]] == t) for t in tasks}
    return metrics
