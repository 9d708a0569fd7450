"""The streaming engine: one code path for evaluation, RL rollouts and the live demo.

MMDuet2 (docs/method.md section 1) turns a video stream into plain multi-turn chat. Every user turn carries the
next `frames_per_turn` frames (each its own image) and, when the user speaks, text; after every user turn the
assistant either replies or says "NO REPLY". The KV cache lives across turns, so a turn costs only its own
tokens: the frames, the user text, the `<|im_start|>assistant\\n` template, then one forward per decoded token.

`Streamer` holds a batch of rows. Batch 1 is the demo and evaluation; an RL group prefills the shared context
once at batch 1 and `expand(G)`s the cache, then every row samples its own replies; the groups of one RL step
are `concat`enated into one batch whose rows each watch their own video (`step_rows`).
Each row records every token it holds and whether the policy sampled it (reply tokens and their <|im_end|>)
or it was forced (frames, user text, template, context replies): that flag becomes the RL loss mask.

A bounded cache (`window` > 0, for the demo and long evaluations; off by default, as the paper keeps everything):
before each turn the cache keeps the sink (the system prompt and the question), the frames of the last `window`
seconds and the text of the newest earlier turns within `text_budget` tokens, and drops the rest in place
(`KVCache.evict`); the kept tokens keep their M-RoPE ids (docs/scaling.md, "A bounded cache").

Departures: a reply that hits `max_new_tokens` is closed with a forced <|im_end|> (not trained on) and the
episode goes on, as the paper's rollouts do. The <|im_end|> that closes a reply is written to the cache at the
start of the next turn's chunk rather than with its own forward, which saves one forward per turn and gives
the same cache (the model never conditions on it before then).
"""
import warnings
from dataclasses import dataclass, field

import torch

from .config import preset
from .dialogue import NO_REPLY, SYSTEM_PROMPT, reply_ids, user_chunk_ids
from .model import MMDuet2
from .processor import process_images
from .tokenizer import SPECIAL_TOKENS, train_toy_tokenizer


@dataclass
class StreamConfig:
    frames_per_turn: int = 2
    frame_interval: float = 1.0      # seconds per frame; the paper trains at 2 s and infers at 1 s
    max_new_tokens: int = 100        # per assistant turn; hitting it closes the turn, not the episode
    temperature: float = 0.0         # 0 = greedy; RL samples at 1.2
    top_k: int = 0                   # 0 = no top-k filter; RL uses 10
    min_pixels: int = 56 * 56
    max_pixels: int = 128 * 28 * 28  # about 128 visual tokens per frame, as MMDuet2
    keep_pixels: bool = True         # keep every frame's pixel_values and grid per row (RL re-feeds them; eval needn't)
    window: float = 0.0              # bounded cache: seconds of frames kept (0 = keep everything, the paper)
    text_budget: int = 512           # bounded cache: tokens of earlier turns' text kept besides the sink

    def __post_init__(self):
        for name in ("max_new_tokens", "frames_per_turn"):
            if not getattr(self, name) >= 1:
                raise ValueError(f"StreamConfig.{name}={getattr(self, name)} (--{name.replace('_', '-')}) must be "
                                 "at least 1.")
        if not self.frame_interval > 0:
            raise ValueError(f"StreamConfig.frame_interval={self.frame_interval} (--frame-interval) must be positive.")
        for name in ("window", "text_budget"):
            if not getattr(self, name) >= 0:
                raise ValueError(f"StreamConfig.{name}={getattr(self, name)} (--{name.replace('_', '-')}) must not "
                                 "be negative.")


@dataclass
class Row:
    """Everything one row of the stream holds, token by token."""
    ids: list = field(default_factory=list)       # every token in this row's sequence
    sampled: list = field(default_factory=list)   # True where the policy sampled the token
    logprobs: list = field(default_factory=list)  # sampling-time log-prob (at the temperature), 0 if forced
    turns: list = field(default_factory=list)     # (time, reply text) per assistant turn, NO REPLY included


def unsayable_ids(tok, vocab_size):
    """(K,) ids a reply may never hold: every special token but <|im_end|> (a sampled <|video_pad|> makes the
    next chunk's vision tokens miscount, and decoding drops specials, so the text would not say what the cache
    holds), and the embedding rows past the tokenizer's vocabulary (Qwen pads its 151,665 tokens to 151,936)."""
    special = {getattr(tok, a) for a in SPECIAL_TOKENS} | {i for i, t in tok.tk.get_added_tokens_decoder().items()
                                                           if t.special}
    return torch.tensor(sorted(special - {tok.im_end_id}) + list(range(tok.vocab_size, vocab_size)))


def sample_next(logits, temperature, top_k, generators=None, active=None, banned=None):
    """Pick one token per row from logits (B, V); returns (tokens (B,), log-probs (B,) at the temperature).

    `banned` ids (from `unsayable_ids`) get -inf first, in greedy decoding too; the log-probs are those of the
    masked distribution, which `grpo.token_logprobs(..., banned=...)` recomputes.
    Only `active` rows draw from their generator (one per row), so a row samples the same tokens whether it
    runs alone or in a batch whose other rows finished earlier; inactive rows get the argmax."""
    if banned is not None:
        logits = logits.index_fill(-1, banned.to(logits.device), float("-inf"))
    tokens = logits.argmax(-1)
    if temperature <= 0:
        return tokens, torch.zeros(tokens.shape, dtype=torch.float32)
    logits = logits.float() / temperature
    logp = logits.log_softmax(-1)
    if top_k > 0:
        kth = logits.topk(min(top_k, logits.shape[-1]), dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    probs = logits.softmax(-1)
    rows = range(len(probs)) if active is None else active.nonzero()[:, 0].tolist()
    for i in rows:
        tokens[i] = torch.multinomial(probs[i], 1, generator=None if generators is None else generators[i])[0]
    return tokens, logp.gather(-1, tokens[:, None])[:, 0]


class Streamer:
    """Rows watching video streams through a model with a KV cache kept across turns (the module docstring)."""

    def __init__(self, model, tokenizer, cfg=None, system_prompt=SYSTEM_PROMPT, seed=None):
        self.model, self.tok, self.cfg = model, tokenizer, cfg or StreamConfig()
        self.system_prompt = system_prompt
        self.device = next(model.parameters()).device
        self.banned = unsayable_ids(tokenizer, model.config.text.vocab_size).to(self.device)
        self.vision_ids = torch.tensor([tokenizer.vision_start_id, tokenizer.image_pad_id, tokenizer.vision_end_id],
                                       device=self.device)
        self.cache = model.new_cache(1)
        self.rows = [Row()]
        self.pending = [[]]               # tokens written to the row but not yet to the cache
        self.frames_seen = [0]            # per row: its clock is frames_seen * frame_interval
        self.pixel_values, self.grids = [[]], [[]]  # per row, every frame fed so far (if cfg.keep_pixels)
        self.warned_positions = False
        self.seed = seed
        # one sampler per row, on the model's device (torch.multinomial refuses a CPU generator for CUDA logits)
        self.generators = None if seed is None else [torch.Generator(self.device).manual_seed(seed)]

    @property
    def time(self):
        """Video time of row 0 (every row, unless rows watch different streams)."""
        return self.row_time(0)

    def row_time(self, i):
        return self.frames_seen[i] * self.cfg.frame_interval

    def expand(self, n):
        """Turn a batch-1 stream into n rows that share everything so far (one RL group)."""
        assert len(self.rows) == 1, "expand() takes a single-row stream"
        self.cache.expand(n)
        row, pend = self.rows[0], self.pending[0]
        self.rows = [Row(list(row.ids), list(row.sampled), list(row.logprobs), list(row.turns)) for _ in range(n)]
        self.pending = [list(pend) for _ in range(n)]
        self.frames_seen = self.frames_seen * n
        self.pixel_values = [list(self.pixel_values[0]) for _ in range(n)]
        self.grids = [list(self.grids[0]) for _ in range(n)]
        if self.seed is not None:
            self.generators = [torch.Generator(self.device).manual_seed(self.seed + i) for i in range(n)]

    @classmethod
    def concat(cls, streamers):
        """One streamer holding the rows of all `streamers` (same model and config), each row keeping its cache,
        clock, frames and sampler. The shorter caches get invalid slots at the end, which no query sees."""
        first = streamers[0]
        out = cls(first.model, first.tok, first.cfg, first.system_prompt)
        out.cache = type(first.cache).concat([s.cache for s in streamers])
        for name in ("rows", "pending", "frames_seen", "pixel_values", "grids"):
            setattr(out, name, [x for s in streamers for x in getattr(s, name)])
        if all(s.generators is not None for s in streamers):
            out.generators = [g for s in streamers for g in s.generators]
        return out

    def step(self, frames, text=None, reply=None):
        """One turn: feed `frames` (PIL images or HxWx3 uint8 arrays) and optional user `text`, then let every
        row answer. With `reply` given the answer is forced instead (ground-truth context turns).
        Returns each row's answer text, None for silence."""
        b = len(self.rows)
        return self.step_rows([frames] * b, [text] * b, [reply] * b)

    @torch.no_grad()
    def step_rows(self, frames, texts, replies):
        """One turn with each row's own input: frames[i] (a list of frames, or None when row i sits this turn
        out, e.g. its video has ended), texts[i] (user text or None), replies[i] (a forced answer, or None to
        let the row answer). Every row's frames must give the same number of visual tokens.
        Returns each row's answer text, None for silence or a row that sat out."""
        b = len(self.rows)
        if all(f is None for f in frames):
            return [None] * b
        merge = self.model.config.vision.spatial_merge_size ** 2
        processed, pixels, grids, seqs, sink = {}, [], [], [], []
        for i, row in enumerate(self.rows):
            if frames[i] is None:
                seqs.append([])  # an all-pad row: masked, nothing recorded, its pending tokens wait
                sink.append(False)
                continue
            if id(frames[i]) not in processed:  # rows watching one stream share the preprocessing
                processed[id(frames[i])] = process_images(frames[i], min_pixels=self.cfg.min_pixels,
                                                          max_pixels=self.cfg.max_pixels)
            pixel_values, grid = processed[id(frames[i])]
            if len({tuple(g) for g in grid.tolist()}) > 1:
                raise ValueError(f"the {len(frames[i])} frames of one turn of row {i} have different sizes (grids "
                                 f"{grid.tolist()}): resize a video's frames to one size before streaming them.")
            chunk = user_chunk_ids(self.tok, self.frames_seen[i] == 0, len(frames[i]), int(grid[0].prod()) // merge,
                                   texts[i], system_prompt=self.system_prompt)
            sink.append(self.frames_seen[i] == 0 or texts[i] is not None)  # this turn's text is never evicted
            self.frames_seen[i] += len(frames[i])
            if self.cfg.keep_pixels:
                self.pixel_values[i].append(pixel_values)
                self.grids[i].append(grid)
            pixels.append(pixel_values)
            grids.append(grid)
            row.ids += chunk
            row.sampled += [False] * len(chunk)
            row.logprobs += [0.0] * len(chunk)
            # What reaches the cache now: the previous reply's closing token(s) (held back, module docstring), this
            # chunk, and a forced reply but its <|im_end|>, which is held back in turn like a sampled reply's.
            forced = reply_ids(self.tok, replies[i]) if replies[i] is not None else []
            seqs.append(self.pending[i] + chunk + forced[:-1])
            self.pending[i] = []
        # Left-pad the rows whose pending tokens differ in number (a capped reply leaves two); pads are masked.
        width = max(map(len, seqs))
        ids = torch.tensor([[0] * (width - len(s)) + s for s in seqs], device=self.device)  # (B, T)
        mask = torch.tensor([[0] * (width - len(s)) + [1] * len(s) for s in seqs], device=self.device)
        mask = None if bool(mask.all()) else mask
        tag = None
        if self.cfg.window:  # bounded cache: evict, then say what each new slot holds (the tags _evict reads)
            self._evict()
            clock = torch.tensor(self.frames_seen, device=self.device)[:, None]  # (B, 1): each row's last frame
            shown = torch.tensor([len(f or []) for f in frames], device=self.device)[:, None]
            frame_no = clock - shown + (ids == self.tok.vision_start_id).cumsum(1)  # (B, T)
            tag = torch.where(torch.isin(ids, self.vision_ids), frame_no,
                              torch.where(torch.tensor(sink, device=self.device)[:, None], 0, -clock))
        # Rows are left-padded, so the last position is every row's last real token: only its logits are needed.
        logits = self._forward(ids, torch.cat(pixels), torch.cat(grids), mask, tag)[:, -1]
        # Only rows that play this turn and have no forced reply sample; the others' logits go unused.
        sample = torch.tensor([frames[i] is not None and replies[i] is None for i in range(b)])
        answers = self._generate(logits, sample) if sample.any() else [None] * b
        for i, row in enumerate(self.rows):
            if frames[i] is not None and replies[i] is not None:  # a context turn: the gold reply is prompt
                self._record(i, reply_ids(self.tok, replies[i]), sampled=False)
                row.turns.append((self.row_time(i), replies[i]))
                answers[i] = None if replies[i] == NO_REPLY else replies[i]
        limit = self.model.config.text.max_position_embeddings
        if not self.warned_positions and int(self.cache.next_pos.max()) >= limit:
            self.warned_positions = True
            warnings.warn(f"a stream passed M-RoPE position {limit} (max_position_embeddings) at {self.time:.0f} s of "
                          "video: the model was never trained on positions this far, so expect worse replies.")
        return answers

    def _forward(self, ids, pixel_values=None, grid=None, attention_mask=None, tag=None):
        pv = None if pixel_values is None else pixel_values.to(self.device, self.model.dtype)
        logits = self.model(ids, attention_mask=attention_mask, pixel_values=pv, logits_to_keep=1,
                            image_grid_thw=None if grid is None else grid.to(self.device), cache=self.cache)
        if tag is not None:
            self.cache.tag[:, self.cache.length - ids.shape[1]:self.cache.length] = tag
        return logits

    def _evict(self):
        """The bounded cache, before a turn's chunk. Slot tags: 0 the sink (the text of the first turn and of
        turns where the user spoke), k > 0 a token of frame k (shown at k * frame_interval), -k the text of the
        turn whose last frame is k. Kept: the sink, frames of the last `window` seconds, and the newest earlier
        turns' text, whole turns only, within `text_budget` tokens."""
        if not self.cache.length:
            return
        tag, valid = self.cache.tag[:, :self.cache.length], self.cache.valid[:, :self.cache.length]
        now = torch.tensor(self.frames_seen, device=tag.device)[:, None]  # (B, 1)
        frames = (tag > 0) & ((now - tag) * self.cfg.frame_interval < self.cfg.window)
        text = (tag < 0) & valid
        within = text & (text.flip(1).cumsum(1).flip(1) <= self.cfg.text_budget)  # the newest text that fits...
        oldest = (-tag).masked_fill(~within, torch.iinfo(tag.dtype).max).amin(1, keepdim=True)
        whole = ~(text & ~within & (-tag == oldest)).any(1, keepdim=True)     # ...less a turn cut in two
        self.cache.evict((tag == 0) | frames | (within & ((-tag > oldest) | whole)))

    def _record(self, i, tokens, sampled, logprobs=None):
        row = self.rows[i]
        row.ids += tokens
        row.sampled += [sampled] * len(tokens)
        row.logprobs += logprobs if logprobs is not None else [0.0] * len(tokens)
        self.pending[i] = [tokens[-1]]  # the reply's last token reaches the cache with the next chunk

    def _generate(self, logits, active):
        """Sample an answer for the rows marked in `active` (B,) bool; the other rows feed masked pads."""
        cfg, b, end = self.cfg, len(self.rows), self.tok.im_end_id
        rows = active.nonzero()[:, 0].tolist()
        out = [[] for _ in range(b)]
        lps = [[] for _ in range(b)]
        active = active.clone()
        for n in range(cfg.max_new_tokens):
            tokens, logp = sample_next(logits, cfg.temperature, cfg.top_k, self.generators, active, self.banned)
            token_list, logp_list = tokens.tolist(), logp.tolist()  # one copy to the host per step, not one per row
            for i in active.nonzero()[:, 0].tolist():
                out[i].append(token_list[i])
                lps[i].append(logp_list[i])
            active &= tokens.cpu() != end
            if not active.any() or n == cfg.max_new_tokens - 1:
                break
            # Rows that finished feed a masked pad so the batch stays rectangular; the mask hides it.
            feed = torch.where(active.to(tokens.device), tokens, torch.zeros_like(tokens))[:, None]
            tag = -torch.tensor(self.frames_seen, device=self.device)[:, None] if cfg.window else None
            logits = self._forward(feed, attention_mask=active[:, None].long().to(self.device), tag=tag)[:, -1]
        replies = [None] * b
        for i in rows:
            sampled = out[i]
            self._record(i, sampled, True, lps[i])
            if sampled[-1] != end:  # hit the cap: close the turn with a forced <|im_end|>
                self._record(i, [end], False)
                self.pending[i] = [sampled[-1], end]
            text = self.tok.decode([t for t in sampled if t != end]).strip()
            self.rows[i].turns.append((self.row_time(i), text))
            replies[i] = None if text == NO_REPLY else text
        return replies


def random_toy_model(text):
    """A random toy model with a toy tokenizer that covers `text` (the demo without a checkpoint, benchmarks)."""
    tok = train_toy_tokenizer([SYSTEM_PROMPT, text, NO_REPLY], vocab_size=512)
    cfg = preset("toy", vocab_size=tok.vocab_size, image_token_id=tok.image_pad_id,
                 video_token_id=tok.video_pad_id, vision_start_token_id=tok.vision_start_id,
                 vision_end_token_id=tok.vision_end_id)
    torch.manual_seed(0)
    return MMDuet2(cfg).eval(), tok
