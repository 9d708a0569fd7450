"""A proactive video dialogue as ChatML token chunks (docs/method.md section 1).

A streaming video is an ordinary Qwen2.5-VL chat: every user turn carries the next frames (each its own
image, `<|vision_start|><|image_pad|>*N<|vision_end|>`) and, when the user speaks, text after them; every
assistant turn is a reply or the literal "NO REPLY". The dialogue is cut into chunks at the points where a
streaming engine hands over between feeding and generating:

    user chunk k   = (k == 0: "<|im_start|>system\\n{system}<|im_end|>\\n" | k > 0: "\\n")
                     + "<|im_start|>user\\n" + frames + text + "<|im_end|>\\n<|im_start|>assistant\\n"
    reply chunk k  = reply text + "<|im_end|>"          (the part the model generates; the loss covers it)

Training (`render_dialogue`) and streaming (mmduet2.stream) build the same chunks, so both see identical ids.
Concatenated they are Qwen's chat template text for the same messages minus the template's final "\\n", which
belongs to the next user chunk (a turn ends when the model emits <|im_end|>). Chunks are tokenized one by
one; this equals tokenizing the whole text because every boundary is a special token or a newline, and
Qwen's pre-tokenizer never glues a newline to the letters after it (tests check both).
"""
from dataclasses import dataclass

import torch

from .tokenizer import IM_END, IM_START, IMAGE_PAD, VISION_END, VISION_START

# The released MMDuet2 system prompt (proactive_eval/inference.py and the paper's Figure 2).
SYSTEM_PROMPT = ("You are a helpful assistant. Your task is to answer questions based on continuously incoming "
                 "video frames. Your responses should include information from the video since your last reply "
                 "(if any). If the information in this segment of the video cannot answer the question, "
                 'output "NO REPLY".')
NO_REPLY = "NO REPLY"  # silence is text, trained like any reply


def silent(text):
    """NO REPLY, an empty reply or none at all: the model said nothing (in every metric and reward term)."""
    return text is None or text.strip() in ("", NO_REPLY)


@dataclass
class Turn:
    """One user turn and the assistant's answer to it (data.build_turns lays a dialogue record out as these)."""
    time: float                       # video time of this turn's last frame (s); not rendered
    frame_indices: list               # 1-based numbers of the frames this turn shows (1 or 2 in the paper)
    user_text: str | None = None      # what the user says at this moment (a question), after the frames
    reply: str = NO_REPLY             # the assistant's answer to this turn: the gold reply or "NO REPLY"
    answer_index: int | None = None   # index into record["answers"] of the gold reply (the first if two)


def user_chunk_text(first, n_frames, tokens_per_frame, text=None, system_prompt=SYSTEM_PROMPT):
    """The text of one user chunk (see the module docstring); `first` opens the dialogue with the system turn."""
    if n_frames and tokens_per_frame < 1:
        raise ValueError(f"tokens_per_frame={tokens_per_frame}: a frame needs at least one visual token.")
    head = f"{IM_START}system\n{system_prompt}{IM_END}\n" if first else "\n"
    frames = (VISION_START + IMAGE_PAD * tokens_per_frame + VISION_END) * n_frames
    return f"{head}{IM_START}user\n{frames}{text or ''}{IM_END}\n{IM_START}assistant\n"


def user_chunk_ids(tok, first, n_frames, tokens_per_frame, text=None, system_prompt=SYSTEM_PROMPT) -> list[int]:
    return tok.encode(user_chunk_text(first, n_frames, tokens_per_frame, text, system_prompt))


def reply_ids(tok, text) -> list[int]:
    """The assistant's tokens for one turn: the reply text, then <|im_end|> (which ends the turn when sampling)."""
    return tok.encode(text) + [tok.im_end_id]


def render_dialogue(tok, turns, tokens_per_frame, system_prompt=SYSTEM_PROMPT):
    """All turns as one sequence -> (ids LongTensor (T,), loss_mask BoolTensor (T,)). The mask is True on
    reply tokens and their <|im_end|> ("NO REPLY" turns included), False on system, user, frame and
    template tokens (docs/method.md section 3.1: loss on all assistant turns, never on the prompt)."""
    if not turns:
        raise ValueError("render_dialogue got no turns: a dialogue needs at least one user turn.")
    ids, mask = [], []
    for k, turn in enumerate(turns):
        prompt = user_chunk_ids(tok, k == 0, len(turn.frame_indices), tokens_per_frame, turn.user_text, system_prompt)
        answer = reply_ids(tok, turn.reply)
        ids += prompt + answer
        mask += [False] * len(prompt) + [True] * len(answer)
    return torch.tensor(ids, dtype=torch.long), torch.tensor(mask, dtype=torch.bool)
