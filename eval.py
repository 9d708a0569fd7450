"""Evaluate checkpoints on ProactiveVideoQA-format records and score them with PAUC (docs/method.md section 4).

    python eval.py                                   # the toy experiment: runs/toy/sft vs runs/toy/rl
    python eval.py --checkpoint DIR --gold FILE --video-root DIR --judge-url URL --judge-model NAME --out DIR
    python eval.py --pred predictions.jsonl --gold FILE ...   # score existing predictions, no model

Writes OUT/predictions.jsonl (one line per example, appended as it goes so an interrupted run resumes; its
provenance, the checkpoint and stream settings, in predictions.jsonl.meta.json), OUT/metrics.json, timeline PNGs
for a few examples, and prints a table. Every gold turn is scored: a video that fails scores as silence and is
counted; so are failed judgements. The toy benchmark (ShapeWatch) is
scored with the rule judge; real benchmarks with an LLM judge behind an OpenAI-compatible endpoint. A real
benchmark's video stops after its last gold reply span, as ProactiveVideoQA's released inference does; ShapeWatch
videos play to their end (`--rounds` picks either).
"""
import argparse
import hashlib
import os
import sys

from mmduet2.checkpoint import load_checkpoint, write_json
from mmduet2.data import load_proactive_records
from mmduet2.evaluate import load_predictions, predict_records, score
from mmduet2.judges import JudgeError, LLMJudge
from mmduet2.plot import draw_timeline
from mmduet2.stream import StreamConfig
from mmduet2.training import pick_device
from shapewatch import RuleJudge

TOY = {"sft": "runs/toy/sft", "rl": "runs/toy/rl"}


def checkpoint_id(path):
    """sha256 of a checkpoint directory's config.json and weight files: which model wrote a predictions file."""
    h = hashlib.sha256()
    for name in sorted(os.listdir(path)):
        if name == "config.json" or name.endswith(".safetensors"):
            with open(os.path.join(path, name), "rb") as f:
                for block in iter(lambda: f.read(1 << 23), b""):
                    h.update(block)
    return h.hexdigest()[:16]


def parse_args():
    p = argparse.ArgumentParser(description="Stream checkpoints over a proactive video QA set and score PAUC.")
    p.add_argument("--checkpoint", action="append", default=[],
                   help="checkpoint dir (hub layout + tokenizer.json); repeat as NAME=DIR to compare several "
                        "(default: the toy experiment's sft and rl)")
    p.add_argument("--gold", default="data/toy/test_proactive.json", help="ProactiveVideoQA-format JSON")
    p.add_argument("--video-root", default="data/toy", help="folder the records' video paths are relative to")
    p.add_argument("--pred", help="score this predictions JSONL instead of running a model")
    p.add_argument("--out", default="runs/toy/eval", help="output folder (one subfolder per checkpoint)")
    p.add_argument("--fresh", action="store_true",
                   help="predict again from scratch even if OUT holds predictions (default: resume them when they "
                        "were made by the same checkpoint with the same settings, refuse otherwise)")
    p.add_argument("--judge", choices=["rule", "llm"], help="default: rule for ShapeWatch records, llm otherwise")
    p.add_argument("--judge-url", default="", help="OpenAI-compatible base URL, e.g. http://localhost:8000/v1")
    p.add_argument("--judge-model", default="", help="model name the endpoint serves")
    p.add_argument("--judge-timeout", type=float, default=60.0, help="seconds per judge request before a retry")
    p.add_argument("--judge-max-failures", type=float, default=0.1,
                   help="stop when more than this share of the judgements failed (unusable answers)")
    p.add_argument("--frame-interval", type=float,
                   help="seconds between frames; default 1 s (the paper's inference setting), 2 s on ShapeWatch")
    p.add_argument("--frames-per-turn", type=int, default=2, help="frames per user turn")
    p.add_argument("--max-new-tokens", type=int, default=100, help="cap on tokens per reply")
    p.add_argument("--batch-size", type=int, default=16, help="videos streamed side by side (rows of one batch)")
    p.add_argument("--rounds", choices=["full", "benchmark"],
                   help="benchmark: stop after the last gold reply span, as ProactiveVideoQA's released inference "
                        "(same scores inside the spans, less time on long videos; the default), full: stream every "
                        "video to its end (the default on ShapeWatch, whose figures were measured so)")
    p.add_argument("--window", type=float, default=0.0,
                   help="bounded KV cache for long videos: seconds of frames kept (0 = keep everything, the paper)")
    p.add_argument("--text-budget", type=int, default=512,
                   help="bounded cache: tokens of earlier turns' text kept besides the system prompt and question")
    p.add_argument("--limit", type=int, default=0, help="evaluate only the first N records (0 = all)")
    p.add_argument("--timelines", type=int, default=4, help="timeline PNGs to draw")
    p.add_argument("--device", default="auto", help="cpu, cuda or auto (a checkpoint runs in bf16 on a GPU)")
    return p.parse_args()


def main():
    args = parse_args()
    try:
        records = load_proactive_records(args.gold)[:args.limit or None]
    except (OSError, ValueError) as e:
        sys.exit(str(e))
    if not records or not any(r["answer"] for r in records):
        sys.exit(f"{args.gold} holds no gold answers to score: check the file (and --limit).")
    shapewatch = all(r.get("task") == "shapewatch" for r in records)  # the rule judge reads its vocabulary
    judge_kind = args.judge or ("rule" if shapewatch else "llm")
    if judge_kind == "llm":
        if not (args.judge_url and args.judge_model):
            sys.exit("The LLM judge needs --judge-url and --judge-model (or pass --judge rule for ShapeWatch).")
        llm = LLMJudge(args.judge_url, args.judge_model, cache_path=os.path.join(args.out, "judge_cache.jsonl"),
                       timeout=args.judge_timeout)
        try:
            llm.ping()  # before hours of streaming, not after
        except JudgeError as e:
            sys.exit(str(e))
        judge = llm.benchmark_score
    else:
        judge = RuleJudge(max_score=2)

    if args.pred:
        runs = {"pred": args.pred}
    elif args.checkpoint:
        runs = dict(c.split("=", 1) if "=" in c else (os.path.basename(os.path.normpath(c)), c)
                    for c in args.checkpoint)
    else:
        runs = TOY
    # The toy is evaluated at its training rate: at 1 s per frame the tiny SFT model repeats itself (docs).
    interval = args.frame_interval if args.frame_interval is not None else 2.0 if shapewatch else 1.0
    rounds = args.rounds or ("full" if shapewatch else "benchmark")
    try:
        cfg = StreamConfig(args.frames_per_turn, interval, args.max_new_tokens, keep_pixels=False, window=args.window,
                           text_budget=args.text_budget)
    except ValueError as e:
        sys.exit(str(e))
    results = {}
    for name, path in runs.items():
        out = os.path.join(args.out, name) if len(runs) > 1 or not args.pred else args.out
        os.makedirs(out, exist_ok=True)
        if args.pred:
            preds, failed = load_predictions(path), []
        else:
            if not os.path.exists(os.path.join(path, "config.json")):
                sys.exit(f"{path} holds no checkpoint (config.json missing): train it first or fix --checkpoint.")
            print(f"[{name}] streaming {len(records)} videos with {path}")
            model, tok = load_checkpoint(path, device=pick_device(args.device))
            try:
                preds, failed = predict_records(
                    model, tok, records, args.video_root, cfg, pred_path=os.path.join(out, "predictions.jsonl"),
                    batch_size=args.batch_size, fresh=args.fresh, rounds=rounds,
                    provenance={"checkpoint": os.path.abspath(path), "checkpoint_id": checkpoint_id(path),
                                "gold": os.path.abspath(args.gold)})
            except ValueError as e:
                sys.exit(str(e))
        for q, e in failed:
            print(f"[{name}] video of {q} failed, scored as silence: {e}", file=sys.stderr)
        if len(failed) == len(records):
            sys.exit(f"[{name}] every video failed: nothing was predicted (see the errors above).")
        try:
            metrics = score(records, preds, judge, failed)
            if judge_kind == "llm":
                llm.check_failures(args.judge_max_failures)
        except JudgeError as e:
            sys.exit(f"[{name}] {e}")
        metrics["failed"] = [{"question_id": q, "error": e} for q, e in failed]
        metrics["frame_interval"] = interval
        write_json(os.path.join(out, "metrics.json"), metrics)
        results[name] = metrics
        for rec in records[:args.timelines]:
            draw_timeline(os.path.join(out, f"timeline_{rec['question_id']}.png"), rec["duration"],
                          preds.get(rec["question_id"], {"replies": []})["replies"],
                          [a["reply_timespan"] for a in rec["answer"]], title=rec["conversation"][0]["content"])

    print_table(results)
    if runs is TOY:
        write_json("runs/toy/eval.json", results)
        draw_toy_comparison(records, args.out)
        print("wrote runs/toy/eval.json and runs/toy/eval/compare_*.png")


COLUMNS = [("pauc", "PAUC"), ("pauc_omega0", "PAUC w=0"), ("duplicate_ratio", "dup %"),
           ("reply_turns", "replies/ex"), ("replies_outside", "outside/ex"), ("median_reply_delay", "delay s"),
           ("answered_spans", "spans hit %"), ("silent_after_reply", "quiet after %")]


def print_table(results):
    """One row per model; duplicates also as counts, and failed videos and judgements when there are any."""
    print(f"{'model':<10}" + "".join(f"{title:>13}" for _, title in COLUMNS) + f"{'dup count':>12}")
    for name, m in results.items():
        cells = []
        for key, _ in COLUMNS:
            v = m.get(key)
            v = v * 100 if key in ("duplicate_ratio", "answered_spans", "silent_after_reply") and v is not None else v
            cells.append(f"{v:>13.2f}" if isinstance(v, (int, float)) else f"{'-':>13}")
        print(f"{name:<10}" + "".join(cells) + f"{str(m['duplicates']) + ' of ' + str(m['replies_after_first']):>12}")
        if m["failed_videos"] or m["judge_failures"]:
            print(f"{'':<10}{m['failed_videos']} of {m['n']} videos failed (scored as silence), "
                  f"{m['judge_failures']} judgements failed (no point)")


def draw_toy_comparison(records, out, n=4):
    preds = {name: load_predictions(os.path.join(out, name, "predictions.jsonl")) for name in TOY}
    for rec in records[:n]:
        q = rec["question_id"]
        draw_timeline(os.path.join(out, f"compare_{q}.png"), rec["duration"], None,
                      [a["reply_timespan"] for a in rec["answer"]], title=rec["conversation"][0]["content"],
                      rows={name: p[q]["replies"] if q in p else [] for name, p in preds.items()})


if __name__ == "__main__":
    main()
