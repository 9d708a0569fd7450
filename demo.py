"""Watch a video with an MMDuet2 checkpoint: print each reply at its video time and write a timeline PNG.

    python demo.py VIDEO --question "Tell me every time a red shape appears." --checkpoint runs/toy/rl \
        --frame-interval 2 [--annotation GOLD.json --question-id ID] [--realtime]
    python demo.py /dev/video0 --live --format v4l2 --question "..." --checkpoint CKPT --window 32
    python demo.py rtsp://camera/stream --live --av-option rtsp_transport=tcp --question "..." --checkpoint CKPT

Frames are decoded as the stream reaches them, so a long video costs no more memory than a short one; the KV cache
grows with the stream unless --window bounds it (docs/scaling.md, "Long streams"). Without --checkpoint the weights
are random, which only shows the plumbing. With --live the source is sampled by the wall clock (LiveFrames, below):
each turn takes the newest frames, and those the model was too slow to see are dropped and counted. Ctrl-C stops the
demo and still writes the timeline (and --replies).
"""
import argparse
import collections
import itertools
import sys
import threading
import time as _time

import av

from mmduet2.checkpoint import load_checkpoint, write_json
from mmduet2.data import load_proactive_records
from mmduet2.plot import draw_timeline
from mmduet2.stream import StreamConfig, Streamer, random_toy_model
from mmduet2.training import pick_device
from mmduet2.video import EPS, VideoError, iter_frames, video_stream


class LiveFrames:
    """A live source that PyAV opens (a webcam such as /dev/video0 with format="v4l2", an RTSP/HTTP URL, a pipe, a
    growing file), sampled every `interval` seconds of wall-clock time. A background thread decodes it as it arrives
    and keeps only the newest `keep` samples, so a consumer that falls behind gets the newest frames, never a backlog.
    Sample k is the first frame to arrive k * interval seconds or more after the first frame did; a sample that was
    never taken (the consumer, or the source, fell behind) is counted in `dropped` by `turns`."""

    def __init__(self, source, interval, keep, format=None, options=None):
        try:
            self.container = av.open(source, format=format, options=options or {})
        except av.FFmpegError as e:
            raise VideoError(f"{source} could not be opened ({e}): check the device or URL, --format and "
                             "--av-option.") from None
        self.source, self.interval, self.dropped, self.error = source, interval, 0, None
        self.samples, self.ended, self.arrived = collections.deque(maxlen=keep), False, threading.Condition()
        threading.Thread(target=self._decode, args=(video_stream(self.container, source),), daemon=True).start()

    def _decode(self, stream):
        start, k = None, 0
        try:
            for frame in self.container.decode(stream):
                start = _time.monotonic() if start is None else start
                due = int((_time.monotonic() - start) / self.interval + EPS)
                if due > k:  # only sampled frames are converted; the others are decoded and let go
                    k, rgb = due, frame.to_ndarray(format="rgb24")
                    with self.arrived:
                        self.samples.append((k, rgb))
                        self.arrived.notify()
        except av.FFmpegError as e:
            self.error = f"{self.source} stopped decoding ({e})"
        with self.arrived:
            self.ended = True
            self.arrived.notify()

    def turns(self, n):
        """Yield (the newest `n` frames not yet taken, time stamp of the last), waiting for them; after the source
        ends, what is left (maybe fewer), then stop. The samples skipped in between are added to `dropped`."""
        taken = 0  # the number of the last sample taken
        while True:
            with self.arrived:
                self.arrived.wait_for(lambda: self.ended or (self.samples and self.samples[-1][0] >= taken + n))
                new = [s for s in self.samples if s[0] > taken][-n:]
            if not new:
                return
            self.dropped += new[-1][0] - taken - len(new)
            taken = new[-1][0]
            yield [f for _, f in new], taken * self.interval


def main(argv=None):
    p = argparse.ArgumentParser(description="Watch a video with MMDuet2 and print what it says, and when.")
    p.add_argument("video", help="a video file PyAV can decode, or a folder of jpg/png frames (then --fps); with "
                   "--live, a source PyAV opens: a device such as /dev/video0, an RTSP/HTTP URL, a pipe")
    p.add_argument("--live", action="store_true",
                   help="VIDEO is live: sample it by the wall clock and drop the frames the model is too slow for")
    p.add_argument("--format", help="live: the PyAV/FFmpeg input format, e.g. v4l2 for a webcam (default: guessed)")
    p.add_argument("--av-option", action="append", default=[], metavar="KEY=VALUE",
                   help="live: an option for av.open, repeatable (rtsp_transport=tcp, video_size=640x480, ...)")
    p.add_argument("--seconds", type=float, default=0.0, help="stop after this many seconds of stream (0 = at its end)")
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
    p.add_argument("--replies", help="also write the replies as JSON [{time, content}] here")
    p.add_argument("--device", default="auto", help="cpu, cuda or auto (a checkpoint runs in bf16 on a GPU)")
    args = p.parse_args(argv)
    if bad := [o for o in args.av_option if "=" not in o]:
        p.error(f"--av-option {bad[0]!r} is not KEY=VALUE (e.g. rtsp_transport=tcp)")
    spans = []  # read before streaming, so that a wrong --annotation never costs a long run's timeline
    if args.annotation:
        records = load_proactive_records(args.annotation)
        rec = next((r for r in records if args.question_id in (None, r["question_id"])), None)
        if rec is None:
            sys.exit(f"{args.annotation}: no record with question_id {args.question_id!r}.")
        spans = [a["reply_timespan"] for a in rec["answer"]]

    device = pick_device(args.device)
    if args.checkpoint:
        model, tok = load_checkpoint(args.checkpoint, device=device)
    else:
        model, tok = random_toy_model(args.question)
        model.to(device)
        print("No --checkpoint given: the weights are RANDOM, so the replies below are noise.", file=sys.stderr)
    cfg = StreamConfig(frames_per_turn=args.frames_per_turn, frame_interval=args.frame_interval,
                       max_new_tokens=args.max_new_tokens, keep_pixels=False, window=args.window,
                       text_budget=args.text_budget)
    try:
        if args.live:
            live = LiveFrames(args.video, args.frame_interval, cfg.frames_per_turn, args.format,
                              dict(o.split("=", 1) for o in args.av_option))
            turns = live.turns(cfg.frames_per_turn)
        else:
            frames = iter_frames(args.video, args.frame_interval, fps=args.fps)  # decoded as the stream reaches them
            chunks = iter(lambda: list(itertools.islice(frames, cfg.frames_per_turn)), [])
            turns = (([f for f, _ in c], c[-1][1]) for c in chunks)  # (frames, time of the last), as live.turns
    except VideoError as e:
        sys.exit(str(e))
    streamer = Streamer(model, tok, cfg)
    start, replies, now, dropped = _time.time(), [], 0.0, 0
    try:
        for turn, now in turns:  # now: the stream time of the turn's last frame
            reply = streamer.step(turn, args.question if streamer.time == 0 else None)[0]
            if args.realtime:
                _time.sleep(max(0.0, now - (_time.time() - start)))
            if args.live and live.dropped > dropped:
                dropped = live.dropped
                print(f"[{now:6.1f}s] {dropped} frames dropped so far: the model (or the source) is behind the "
                      "stream", file=sys.stderr, flush=True)
            if reply is not None:
                replies.append({"time": now, "content": reply})
                print(f"[{now:6.1f}s] {reply}", flush=True)
            if args.seconds and now >= args.seconds:
                break
    except KeyboardInterrupt:
        print(f"Stopped at {now:.1f} s of stream (Ctrl-C).", file=sys.stderr)
    draw_timeline(args.timeline, now, replies, spans, title=args.question)
    if args.replies:
        write_json(args.replies, replies)
    lost = f", {live.dropped} frames dropped" if args.live else ""
    print(f"{len(replies)} replies in {now:.0f} s of video{lost}; timeline written to {args.timeline}")
    if args.live and live.error:
        sys.exit(f"{live.error}; the timeline (and --replies) hold the replies until then.")


if __name__ == "__main__":
    main()
