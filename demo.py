"""Watch a video with an MMDuet2 checkpoint: print each reply at its video time and write a timeline PNG.

    python demo.py VIDEO --question "Tell me every time a red shape appears." --checkpoint runs/toy/rl \
        --frame-interval 2 [--annotation GOLD.json --question-id ID] [--realtime]

Frames are decoded as the stream reaches them, so a long video costs no more memory than a short one; the KV cache
grows with the stream unless --window bounds it (docs/scaling.md, "Long streams"). Without --checkpoint the weights are random, which only shows the plumbing.
"""
import argparse
import itertools
import sys
import time as _time

from mmduet2.checkpoint import load_checkpoint
from mmduet2.data import load_proactive_records
from mmduet2.plot import draw_timeline
from mmduet2.stream import StreamConfig, Streamer, random_toy_model
from mmduet2.training import pick_device
from mmduet2.video import iter_frames


def main(argv=None):
    p = argparse.ArgumentParser(description="Watch a video with MMDuet2 and print what it says, and when.")
    p.add_argument("video", help="a video file PyAV can decode, or a folder of jpg/png frames (then --fps)")
    p.add_argument("--question", required=True, help="the question, asked at time 0")
    p.add_argument("--checkpoint", help="checkpoint directory (hub layout + tokenizer.json); random weights if absent")
    p.add_argument("--fps", type=float, help="frame rate of a frame folder")
    p.add_argument("--frame-interval", type=float, default=1.0, help="seconds between sampled frames")
    p.add_argument("--frames-per-turn", type=int, default=2, help="frames per user turn")
    p.add_argument("--max-new-tokens", type=int, default=100, help="cap on tokens per reply")
    p.add_argument("--realtime", action="store_true", help="pace the turns at the video's own speed")
    p.add_argument("--window", type=float, default=0.0,
                   help="bounded KV cache: seconds of frames kept (0 = keep everything, as the paper)")
    p.add_argument("--text-budget", type=int, default=512,
                   help="bounded cache: tokens of earlier turns' text kept besides the system prompt and question")
    p.add_argument("--annotation", help="ProactiveVideoQA JSON whose gold spans are drawn on the timeline")
    p.add_argument("--question-id", help="which record of --annotation (default: the first)")
    p.add_argument("--timeline", default="timeline.png", help="where to write the timeline PNG")
    p.add_argument("--device", default="auto", help="cpu, cuda or auto (a checkpoint runs in bf16 on a GPU)")
    args = p.parse_args(argv)

    device = pick_device(args.device)
    if args.checkpoint:
        model, tok = load_checkpoint(args.checkpoint, device=device)
    else:
        model, tok = random_toy_model(args.question)
        model.to(device)
        print("No --checkpoint given: the weights are RANDOM, so the replies below are noise.", file=sys.stderr)
    frames = iter_frames(args.video, args.frame_interval, fps=args.fps)  # decoded as the stream reaches them
    cfg = StreamConfig(frames_per_turn=args.frames_per_turn, frame_interval=args.frame_interval,
                       max_new_tokens=args.max_new_tokens, keep_pixels=False, window=args.window,
                       text_budget=args.text_budget)
    streamer = Streamer(model, tok, cfg)
    start, replies = _time.time(), []
    while turn := [f for f, _ in itertools.islice(frames, cfg.frames_per_turn)]:
        reply = streamer.step(turn, args.question if streamer.time == 0 else None)[0]
        if args.realtime:
            _time.sleep(max(0.0, streamer.time - (_time.time() - start)))
        if reply is not None:
            replies.append({"time": streamer.time, "content": reply})
            print(f"[{streamer.time:6.1f}s] {reply}", flush=True)
    spans = []
    if args.annotation:
        records = load_proactive_records(args.annotation)
        rec = next((r for r in records if args.question_id in (None, r["question_id"])), None)
        if rec is None:
            sys.exit(f"{args.annotation}: no record with question_id {args.question_id!r}.")
        spans = [a["reply_timespan"] for a in rec["answer"]]
    draw_timeline(args.timeline, streamer.time, replies, spans, title=args.question)
    print(f"{len(replies)} replies in {streamer.time:.0f} s of video; timeline written to {args.timeline}")


if __name__ == "__main__":
    main()
