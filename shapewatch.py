"""ShapeWatch: a synthetic proactive video QA benchmark small enough to train on a CPU in minutes.

Videos are 56x56 px mp4 at 2 fps, 36-48 s long: a dark noisy background on which big flat shapes (circle,
square, triangle; red, green, blue, yellow) appear, drift slowly and vanish, each visible 10-20 s; sometimes one
changes colour mid-life, which ends a visible span of the old colour and starts one of the new colour. Two screen
halves act as lanes holding one object at a time, so at most two are visible and they never overlap. Questions ask
about one colour or one shape ("Tell me every time a red shape appears."); every matching appearance is a gold
answer ("Red circle appeared.") with related_timespan [appear, event_end] and reply_timespan
[appear, min(event_end + 1, duration)]; about half the appearances match, the rest are distractors, and about 15 %
of videos have nothing to report (silence must be learnt). Answers name the colour first, so the first token of a
reply depends on what is on screen and, under a colour question, on what is asked (with "A red circle ..." the
toy's reply-or-silence decision did not learn to read the question; docs/experiments.md). This is the toy
stand-in for the paper's data (docs/method.md); it is not from the paper.

The annotated end of an event, event_end, is not visible in the video (objects stay at least 10 s): it is drawn
so that the event's reply span ends within the first 4 s turn showing the object (30 % of events) or just after
the next one (70 %). SFT data places each reply on the last turn of its span (the paper's placement), so the SFT model
learns to answer one turn late and to stay silent while the object is still on screen once it has answered; only
the reply already given tells it so, since the end is invisible. A late answer costs real PAUC (gold answers on
every span's last turn score about 16 points below the same answers on its first turn), and that is the timing RL
can learn (docs/experiments.md has the span-end designs that left the greedy SFT model mute).

Half the dialogues are 1QnA (one question at 0), half nQnA (2-3 questions): a question asked mid-video comes on a
turn boundary (a multiple of TURN = 4 s, the toy's turn of 2 frames at 2 s, so its immediate span [q, q + 1]
holds that turn), first gets an immediate answer ("Red circle is visible." or "No red shape yet."), then covers the
appearances that start before the next question. No appearance starts within the turn before a question, and an
answer still open when the next question arrives has both spans cut to end 1 s before it, so every span holds a
turn. Videos are longer than an RL episode (20-32 s on the toy), so episodes start with context turns.

The gold never repeats itself (v8): no two answers of a dialogue name the same (colour, shape) pair, so a policy
that says the gold is charged nothing by r_rep, which counts an exact repeat and a reply whose objects were all
named before (`python -m bench.gold_reward`; on v7 it charged 425 of 1,084 train dialogues, the right answer to a
second red circle or a second question's "Nothing yet." repeating earlier words). A matching look is drawn among the
pairs not yet answered (a distractor once none is left), a colour change never turns into an answered look, and a
scene that would still repeat (an object on screen when a later question asks for it, two alike at once) is
redrawn: about 1 draw in 10, which leaves 1.71 answers a train video against v7's 1.83.

The rule judges at the end of this file score a reply and spot a repeat from the (colour, shape) pairs it names,
so the toy trains and evaluates without a judge server. This file sits beside the programs rather than in the
package: `mmduet2/` is the method, ShapeWatch is one task to run it on.

Timing is exact under the frame convention of mmduet2/video.py: event times are whole seconds, an object is on screen
for video times t with appear <= t < vanish, and the frame stamped k s shows time k. So a 1 s sampler sees an
object first in the frame stamped `appear`, the start of its reply span, and never earlier.

    python shapewatch.py --out data/toy --train 1200 --val 240 --test 240 --seed 0
"""
import argparse
import json
import os
import re
import time
from dataclasses import dataclass
from fractions import Fraction

import av
import numpy as np
from PIL import Image, ImageDraw

from mmduet2.checkpoint import atomic_path

VERSION = 8                             # 8: v7 whose gold answers never repeat one another
SIZE, FPS = 56, 2                       # frame side in px (4 visual tokens a frame), frames per second of the mp4
TURN = 4                                # seconds per turn at the toy's rate (2 frames at 2 s): questions sit on it
DURATIONS = (36, 40, 44, 48)            # video lengths in seconds (whole turns)
LIFE = (10, 20)                         # seconds an object stays on screen, inclusive range
P_FIRST_TURN = 0.3                      # share of events whose span ends within the first turn showing them
BACKGROUND, NOISE = 24, 4.0             # dark grey, std of the (static) background noise
COLOURS = {"red": (230, 30, 30), "green": (30, 200, 50), "blue": (40, 90, 255), "yellow": (240, 220, 30)}
SHAPES = ["circle", "square", "triangle"]
VOCAB = {"colours": list(COLOURS), "shapes": SHAPES}   # the words the rule judges below read
SPLITS = {"train": 0, "val": 1, "test": 2}              # folded into each example's seed
SIZES = {"train": 1200, "val": 240, "test": 240}        # the default dataset (val and test: 120 questions each)
P_EMPTY = 0.15                          # share of videos where no object is made to match
TASK = "shapewatch"


@dataclass
class Segment:
    colour: str
    start: int                          # on screen for start <= t < end (whole seconds)
    end: int
    event_end: int = None               # annotated end of the appearance event (see `annotate`); None = end

    def __post_init__(self):
        self.event_end = self.end if self.event_end is None else self.event_end


@dataclass
class Obj:
    shape: str
    size: int                           # px across
    p0: tuple                           # centre (x, y) when it appears; moves linearly to p1 when it vanishes
    p1: tuple
    segments: list                      # consecutive Segments; a colour change splits the life in two

    def centre(self, t):
        a, b = self.segments[0].start, self.segments[-1].end
        f = min(max((t - a) / (b - a), 0.0), 1.0)
        return tuple(u + f * (v - u) for u, v in zip(self.p0, self.p1))

    def colour_at(self, t):
        return next((s.colour for s in self.segments if s.start <= t < s.end), None)


@dataclass
class Scene:
    duration: int
    objects: list
    questions: list                     # [(time, target)], target a colour or a shape


def question_text(target):
    return f"Tell me every time a {target} shape appears." if target in COLOURS else \
        f"Tell me every time a {target} appears."


def question_target(text):
    """The colour or shape a ShapeWatch question asks about (question_text's inverse); None for any other text."""
    return next((tg for tg in list(COLOURS) + SHAPES if question_text(tg) == text), None)


def nothing_yet(target):
    """The immediate answer when nothing the question asks for is on screen: "No red shape yet.", "No circle yet."
    (v8; v7 said "Nothing yet." to every question, so a dialogue's second such answer repeated its first)."""
    return f"No {target} shape yet." if target in COLOURS else f"No {target} yet."


def matches(target, colour, shape):
    return target in (colour, shape)


def presence(record, t, silent):
    """A presence reply for the base model's training (train_sft.py --dense-mix): what the frame stamped t shows of
    what the question in force asks for, in the immediate answers' words ("Red circle is visible."), or `silent`
    when none of it is on screen (or nothing has been asked yet). Needs the record's `objects` and ShapeWatch
    questions."""
    asked = [q["text"] for q in record["questions"] if q["time"] <= t]
    if not asked:
        return silent
    target = question_target(asked[-1])
    if target is None:
        raise ValueError(f"record {record.get('id')}: {asked[-1]!r} is not a ShapeWatch question, so there is no "
                         "presence reply for it; use --dense-mix with ShapeWatch data only.")
    seen = [f"{o['colour']} {o['shape']} is visible.".capitalize()
            for o in sorted(record["objects"], key=lambda o: o["start"])
            if o["start"] <= t < o["end"] and matches(target, o["colour"], o["shape"])]
    return " ".join(seen) or silent


# ---------------------------------------------------------------------------------------------------------
# Scenes

def _attributes(rng, target, match, said=()):
    """(colour, shape) that does or does not match `target`; a match is none of the pairs in `said` (those the
    dialogue's answers name already), and when every matching pair is said it becomes a distractor."""
    pairs = [(c, s) for c in COLOURS for s in SHAPES if matches(target, c, s) == match and (c, s) not in said]
    if not pairs:
        return _attributes(rng, target, False)
    return pairs[int(rng.integers(len(pairs)))]


def make_scene(rng, kind, durations=DURATIONS):
    """A random scene: first the timeline (per lane: appear / vanish / colour-change times; question times on the
    turn grid), then the looks, each object matching the question in force when it appears with probability 1/2."""
    duration = int(rng.choice(durations))
    n_questions = 1 if kind == "1qna" else int(rng.integers(2, 4))
    targets = [str(t) for t in rng.choice(list(COLOURS) + SHAPES, size=n_questions, replace=False)]
    timeline = []                                       # (lane, appear, vanish, colour change or None)
    for lane in (0, 1):
        a = int(rng.integers(1, 9))
        while a <= duration - LIFE[0]:
            b = min(a + int(rng.integers(LIFE[0], LIFE[1] + 1)), duration)
            m = int(rng.integers(a + 6, b - 5)) if b - a >= 12 and rng.random() < 0.2 else None
            timeline.append((lane, a, b, m))
            a = b + int(rng.integers(2, 9))             # a gap keeps appearances in one lane separate events
    timeline.sort(key=lambda x: x[1])
    times = [0]
    if kind == "nqna":                                  # on the turn grid, >= 3 turns apart
        starts = [t for _, a, _, m in timeline for t in (a, m) if t is not None]
        cand = [q for q in range(2 * TURN, duration - 2 * TURN + 1, TURN) if not any(q - TURN < t < q for t in starts)]
        for q in rng.permutation(cand):
            if len(times) < n_questions and all(abs(int(q) - t) >= 3 * TURN for t in times):
                times.append(int(q))
    scene = Scene(duration, [], list(zip(sorted(times), targets)))

    def target_at(t):
        return [tg for q, tg in scene.questions if q <= t][-1]

    empty, said = rng.random() < P_EMPTY, set()         # said: the (colour, shape) pairs answered so far
    for lane, a, b, m in timeline:
        colour, shape = _attributes(rng, target_at(a), not empty and rng.random() < 0.5, said)
        if matches(target_at(a), colour, shape):
            said.add((colour, shape))
        segments = [Segment(colour, a, b)]
        new = [c for c in COLOURS if c != colour and not (matches(target_at(m), c, shape) and
                                                          (empty or (c, shape) in said))] if m is not None else []
        if new:             # the new colour starts a new answer if it matches: never one already given
            segments = [Segment(colour, a, m), Segment(str(rng.choice(new)), m, b)]
            if matches(target_at(m), segments[1].colour, shape):
                said.add((segments[1].colour, shape))
        size = int(rng.integers(22, 25))   # nearly fills its lane: a tiny vision tower tells shapes apart
        lo = (lane * SIZE // 2 + size // 2 + 2, size // 2 + 2)
        hi = ((lane + 1) * SIZE // 2 - size // 2 - 2, SIZE - size // 2 - 2)
        p0, p1 = (tuple(float(rng.uniform(lo[d], hi[d])) for d in range(2)) for _ in range(2))
        scene.objects.append(Obj(shape, size, p0, p1, segments))
    if not empty and not any(not g.get("immediate") for g in _gold(scene)):   # make sure something answers
        obj = scene.objects[int(rng.integers(len(scene.objects)))]
        a, b = obj.segments[0].start, obj.segments[-1].end
        colour, obj.shape = _attributes(rng, target_at(a), match=True)
        obj.segments = [Segment(colour, a, b)]
    return scene


def annotate(rng, scene):
    """Draw where the annotator ends each appearance event, so that the reply span's last turn (the turn SFT
    answers on) is the first turn showing the object with probability P_FIRST_TURN (the span then ends before the
    next turn, uniformly) and the second one otherwise (the span then ends 0-1 s after it). Its own generator, so
    the videos do not depend on it."""
    for s in (s for o in scene.objects for s in o.segments):
        first = -(-s.start // TURN) * TURN                 # the first turn that shows the object
        lo, hi = (max(s.start + 1, first), first + TURN - 1) if rng.random() < P_FIRST_TURN else \
            (first + TURN, first + TURN + 1)
        s.event_end = min(s.end, int(rng.integers(lo, hi + 1)) - 1)  # the reply span ends 1 s after the event


def _gold(scene):
    """The scene's answers, in the training-dialogue format (see the module docstring)."""
    answers, d = [], scene.duration
    appearances = sorted(((o, s) for o in scene.objects for s in o.segments), key=lambda x: x[1].start)
    for j, (q, target) in enumerate(scene.questions):
        q_next = scene.questions[j + 1][0] if j + 1 < len(scene.questions) else float("inf")
        if j > 0:
            seen = [f"{s.colour} {o.shape} is visible.".capitalize() for o, s in appearances
                    if s.start <= q < s.end and matches(target, s.colour, o.shape)]
            answers.append({"question": j, "content": " ".join(seen) or nothing_yet(target), "related_timespan": [q, q],
                            "reply_timespan": [q, min(q + 1, d)], "immediate": True})
        end = min(d, q_next - 1)                # answers to question j are due before question j + 1
        for o, s in appearances:
            if q < s.start < q_next and matches(target, s.colour, o.shape):
                answers.append({"question": j, "content": f"{s.colour} {o.shape} appeared.".capitalize(),
                                "related_timespan": [s.start, min(s.event_end, end)],
                                "reply_timespan": [s.start, min(s.event_end + 1, end)]})
    return answers


# ---------------------------------------------------------------------------------------------------------
# Rendering

def draw_frame(scene, t, background):
    """The picture at video time t (seconds): the background, then every object on screen at t."""
    img = Image.fromarray(background)
    draw = ImageDraw.Draw(img)
    for o in scene.objects:
        colour = o.colour_at(t)
        if colour is None:
            continue
        (x, y), r = o.centre(t), o.size / 2
        if o.shape == "circle":
            draw.ellipse([x - r, y - r, x + r, y + r], fill=COLOURS[colour])
        elif o.shape == "square":
            draw.rectangle([x - r, y - r, x + r, y + r], fill=COLOURS[colour])
        else:
            draw.polygon([(x, y - r), (x - r, y + 0.8 * r), (x + r, y + 0.8 * r)], fill=COLOURS[colour])
    return np.asarray(img)


def render(scene, rng):
    """All frames of the mp4: frame j shows time j / FPS, so whole-second times land exactly on frames."""
    # one noise pattern per video (a static texture): noise redrawn every frame would dominate the mp4's size
    background = np.clip(BACKGROUND + rng.normal(0, NOISE, (SIZE, SIZE, 3)), 0, 255).astype(np.uint8)
    return [draw_frame(scene, j / FPS, background) for j in range(scene.duration * FPS)]


def make_example(seed, split, i, render_frames=True, durations=DURATIONS):
    """Example i of a split: (scene, rendered frames or None, training-dialogue record). Same arguments, same
    output (the frames are drawn last, so skipping them changes nothing else)."""
    rng = np.random.default_rng([seed, SPLITS[split], i])
    kind = "1qna" if i % 2 == 0 else "nqna"
    for _ in range(100):            # the gold never repeats itself: redraw the scene whose answers still would
        scene = make_scene(rng, kind, durations)   # (an object on screen when a later question asks for it, ...)
        if not names_an_object_twice(_gold(scene)):
            break
    else:
        raise RuntimeError(f"{split} example {i}: no scene without a repeated answer in 100 draws")
    annotate(np.random.default_rng([seed, SPLITS[split], i, 1]), scene)
    name = f"{split}_{i:05d}"
    record = {"id": name, "video": f"videos/{name}.mp4", "duration": float(scene.duration), "frame_interval": 1.0,
              "kind": kind, "questions": [{"time": float(q), "text": question_text(t)} for q, t in scene.questions],
              "answers": _gold(scene),
              # What is on screen when: lets SFT mix in caption dialogues, as the paper mixes in captions.
              "objects": [{"shape": o.shape, "colour": g.colour, "start": g.start, "end": g.end}
                          for o in scene.objects for g in o.segments]}
    return scene, render(scene, rng) if render_frames else None, record


def names_an_object_twice(answers):
    """True iff two of the answers (or one, twice) name the same (colour, shape) pair: what v8's gold never does."""
    named = [pair for a in answers for pair in parse_objects(a["content"])]
    return len(named) != len(set(named))


def to_proactive(record):
    """A 1QnA training record as a ProactiveVideoQA record (video path relative to the dataset folder)."""
    return {"video": record["video"], "question_id": record["id"], "duration": record["duration"], "task": TASK,
            "conversation": [{"role": "user", "content": record["questions"][0]["text"], "time": 0.0}],
            "answer": [{"role": "assistant", "content": a["content"], "related_timespan": a["related_timespan"],
                        "reply_timespan": a["reply_timespan"]} for a in record["answers"]]}


# ---------------------------------------------------------------------------------------------------------
# Rule judges: score and repetition, read from the (colour, shape) pairs a text names (no server needed)

NOTHING_YET = re.compile(r"\bno\s+(?:(?:%s)\s+shapes?|(?:%s)s?)\s+yet\b" % ("|".join(COLOURS), "|".join(SHAPES)))


def parse_objects(text):
    """The (colour, shape) pairs a text names, in order; a colour or shape named alone gives None for the other.

    "A red circle and a blue square appeared." -> [("red", "circle"), ("blue", "square")];
    "Something green, then triangles." -> [("green", "triangle")]; "Nothing yet." -> []; the toy's negative immediate
    answers ("No red shape yet.", "No circle yet.") -> [] too, and only those: a "no" elsewhere is read as no word.
    """
    pairs, colour = [], None
    for w in re.findall(r"[a-z]+", NOTHING_YET.sub(" ", text.lower())):
        if w.endswith("s") and w[:-1] in VOCAB["shapes"]:
            w = w[:-1]  # plural
        if w in VOCAB["colours"]:
            if colour:
                pairs.append((colour, None))
            colour = w
        elif w in VOCAB["shapes"]:
            pairs.append((colour, w))
            colour = None
    if colour:
        pairs.append((colour, None))
    return pairs


def relevant_objects(text, question=None):
    """The (colour, shape) pairs of `text` that agree with what `question` asks about ("every time a red shape
    appears": only red ones; a lone "blue" or "circle" says nothing about red shapes and is dropped)."""
    pairs = parse_objects(text)
    for qc, qs in parse_objects(question or ""):
        pairs = [(c, s) for c, s in pairs if (qc is None or c == qc) and (qs is None or s == qs)]
    return pairs


class RuleJudge:
    """judge(question, gold, reply) -> 0..max_score from the (colour, shape) pairs of gold and reply.

    Per gold pair, the best reply pair scores max_score when colour and shape are both right, max_score // 2
    when one is, 0 otherwise; several gold pairs (an immediate answer listing objects) average, rounded down.
    With precision=True (the RL reward, which judges each reply alone: docs/method.md section 3.3) the same scoring
    the other way round (per reply pair, its best gold pair) caps the result, so wrong objects named beside the
    right one cost what a wrong claim costs: a policy that cannot tell the shape gains nothing by listing them all
    ("A red circle appeared. A red square appeared." is partly right). The benchmark
    judges the accumulated replies of a span (docs/method.md section 4), where an overlapping span's right answer
    looks like such an extra object, so it keeps precision off. A reply object that contradicts what the question
    asks about (a blue one for "every time a red shape appears") is ignored and earns nothing: partial credit is for
    the attribute the question did not ask, so a policy cannot farm it by naming any object at all. (RL found both
    holes: docs/experiments.md, "Judge and reward holes".)
    A gold naming no object ("Nothing yet.") scores max_score iff the reply names none either.
    Example (max_score 2): question "... a circle ...", gold "Red circle appeared.", reply "A blue circle
    appeared." -> 1; question "... a red shape ...", gold "Red circle appeared.", reply "A blue circle" -> 0,
    reply "A red circle and a red square" -> 2, or with precision min(2, (2 + 1) // 2) = 1.
    """

    def __init__(self, max_score=2, precision=False):
        self.max_score, self.precision = max_score, precision

    def __call__(self, question, gold, reply):
        gold_pairs, reply_pairs = parse_objects(gold), relevant_objects(reply, question)
        if not gold_pairs:
            return self.max_score if not reply_pairs else 0
        if not reply_pairs:
            return 0
        recall = self._match(gold_pairs, reply_pairs)
        return min(recall, self._match(reply_pairs, gold_pairs)) if self.precision else recall

    def _match(self, wanted, offered):
        """Mean over `wanted` pairs of the score of its best match among `offered`, rounded down."""
        best = [max((c == wc) + (s == ws) for c, s in offered) for wc, ws in wanted]
        return sum({2: self.max_score, 1: self.max_score // 2, 0: 0}[b] for b in best) // len(best)


def rule_repetition_judge(previous_text, new_reply, question=None):
    """True iff new_reply tells nothing about the question that previous_text has not told.

    Every object the reply names that is relevant to the question must be covered by one named before (a lone
    colour or shape is covered by any earlier object that has it). A reply naming no relevant object ("Nothing
    yet.", or a stray "A blue" under a question about circles) adds nothing only if its words were already said:
    the first "Nothing yet." is new, the second a repeat; so "A red circle appeared. A blue" after "A red circle
    appeared." is a repeat, as the exact repeat is.
    Example: previous "A red circle appeared.", new "The red circle is still here." -> True;
    new "A blue circle appeared." -> False (with the question "... a circle ..."; True under "... a red shape ...").
    """
    seen, new = relevant_objects(previous_text, question), relevant_objects(new_reply, question)
    if not new:
        words = lambda s: " ".join(re.findall(r"[a-z]+", s.lower()))
        return f" {words(new_reply)} " in f" {words(previous_text)} "
    return all(any((c is None or c == pc) and (s is None or s == ps) for pc, ps in seen) for c, s in new)


# ---------------------------------------------------------------------------------------------------------
# Export

def write_video(path, frames, fps):
    """Write uint8 HxWx3 frames as an mp4 (H.264, near-lossless so colours survive), atomically."""
    frames = [np.asarray(f, dtype=np.uint8) for f in frames]
    if not frames:
        raise ValueError(f"write_video({path}): no frames to write.")
    h, w = frames[0].shape[:2]
    if h % 2 or w % 2:
        raise ValueError(f"write_video({path}): frame size {w}x{h} must be even for yuv420p; crop or pad it.")
    rate = Fraction(fps).limit_denominator(1001)
    codec = "libx264" if "libx264" in av.codecs_available else "mpeg4"
    # bf=0 keeps pts == decode order; threads=1 keeps the bytes identical run to run (the toy data is seeded)
    options = {"crf": "10", "preset": "veryfast", "bf": "0", "threads": "1"} if codec == "libx264" else {"b": "4M"}
    with atomic_path(path) as tmp, av.open(tmp, "w", format="mp4") as container:
        stream = container.add_stream(codec, rate=rate, options=options)
        stream.width, stream.height, stream.pix_fmt = w, h, "yuv420p"
        for i, f in enumerate(frames):
            frame = av.VideoFrame.from_ndarray(f, format="rgb24")
            frame.pts, frame.time_base = i, 1 / rate
            container.mux(stream.encode(frame))
        container.mux(stream.encode())


def generate(out_dir, train=SIZES["train"], val=SIZES["val"], test=SIZES["test"], seed=0, log=print,
             durations=DURATIONS):
    """Write the whole dataset into `out_dir` (which should be new; ensure_toy_data makes that atomic)."""
    t0, sizes, stats = time.time(), {"train": train, "val": val, "test": test}, {}
    os.makedirs(os.path.join(out_dir, "videos"), exist_ok=True)
    for split, n in sizes.items():
        records = []
        for i in range(n):
            _, frames, record = make_example(seed, split, i, durations=durations)
            write_video(os.path.join(out_dir, record["video"]), frames, FPS)
            records.append(record)
        with open(os.path.join(out_dir, f"{split}.jsonl"), "w") as f:
            f.writelines(json.dumps(r) + "\n" for r in records)
        if split != "train":
            with open(os.path.join(out_dir, f"{split}_proactive.json"), "w") as f:
                json.dump([to_proactive(r) for r in records if r["kind"] == "1qna"], f, indent=1)
        per_video = [sum(not a.get("immediate") for a in r["answers"]) for r in records]
        stats[split] = {"dialogues": n, "answers": sum(per_video), "videos_without_answer": per_video.count(0),
                        "answers_per_video": {str(k): per_video.count(k) for k in sorted(set(per_video))},
                        "immediate_answers": sum(a.get("immediate", False) for r in records for a in r["answers"])}
        if log:
            log(f"{split}: {n} dialogues, {stats[split]}")
    meta = {"version": VERSION, "seed": seed, "sizes": sizes, "durations": list(durations), "fps": FPS,
            "size": SIZE, "task": TASK, "stats": stats, "seconds": round(time.time() - t0, 1)}
    if log:
        log(f"wrote {sum(sizes.values())} videos in {meta['seconds']} s")
    with open(os.path.join(out_dir, "meta.json"), "w") as f:   # written last: its presence means complete
        json.dump(meta, f, indent=1)
    return meta


def ensure_toy_data(out_dir="data/toy", train=SIZES["train"], val=SIZES["val"], test=SIZES["test"], seed=0,
                    force=False, log=print, durations=DURATIONS):
    """Generate ShapeWatch into `out_dir` unless it is already there with these settings. Returns out_dir.

    The data is written to a temporary sibling folder and renamed into place, so an interrupted run never
    leaves half a dataset. A folder made with other settings is an error unless force=True (then replaced).
    Other `durations` (seconds, whole turns) make longer videos, e.g. for the bounded cache's evaluation.
    """
    out_dir = os.path.normpath(out_dir)
    durations = [int(d) for d in durations]
    if not durations or any(d % TURN or d < min(DURATIONS) for d in durations):
        raise ValueError(f"durations {durations}: each must be a whole number of {TURN} s turns and at least "
                         f"{min(DURATIONS)} s.")
    want = {"version": VERSION, "seed": seed, "sizes": {"train": train, "val": val, "test": test},
            "durations": durations}
    meta_path = os.path.join(out_dir, "meta.json")

    def have():
        if not os.path.exists(meta_path):
            return None
        with open(meta_path) as f:
            meta = json.load(f)
        return {**{k: meta.get(k) for k in want}, "durations": meta.get("durations", list(DURATIONS))}  # older: default

    found = have()
    if found == want and not force:
        return out_dir
    if not force and (found is not None or os.path.isdir(out_dir) and os.listdir(out_dir)):
        raise ValueError(f"{out_dir} already holds other data ({found or 'no meta.json'}), not ShapeWatch {want}: "
                         "delete it, pick another folder, or pass force=True (--force).")
    if log:
        log(f"generating ShapeWatch into {out_dir} ({want['sizes']}, seed {seed})")
    try:
        with atomic_path(out_dir) as tmp:
            generate(tmp, train, val, test, seed, log, durations)
    except OSError:
        if have() != want:                      # another process finishing first is fine, anything else is not
            raise
    return out_dir


def main():
    p = argparse.ArgumentParser(description="Generate the ShapeWatch toy benchmark (videos + dialogue annotations).")
    p.add_argument("--out", default="data/toy", help="output folder (created atomically)")
    p.add_argument("--train", type=int, default=SIZES["train"], help="training dialogues (one video each)")
    p.add_argument("--val", type=int, default=SIZES["val"], help="validation dialogues (the 1QnA half selects RL)")
    p.add_argument("--test", type=int, default=SIZES["test"], help="test dialogues (the 1QnA half is the benchmark)")
    p.add_argument("--seed", type=int, default=0, help="seed; the same seed gives the same data")
    p.add_argument("--durations", type=int, nargs="+", default=list(DURATIONS),
                   help="video lengths to draw from, seconds (longer videos: the bounded cache's evaluation)")
    p.add_argument("--force", action="store_true", help="replace an existing folder made with other settings")
    args = p.parse_args()
    try:
        ensure_toy_data(args.out, args.train, args.val, args.test, args.seed, force=args.force,
                        durations=args.durations)
    except ValueError as e:
        raise SystemExit(str(e))
    with open(os.path.join(args.out, "meta.json")) as f:
        print(json.dumps(json.load(f), indent=1))


if __name__ == "__main__":
    main()
