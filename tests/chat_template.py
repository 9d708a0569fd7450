"""Qwen2.5-VL's chat template in plain Python, for the tests that check our dialogue chunks against it (and it
against the Jinja template itself, when transformers is installed)."""
from mmduet2.dialogue import SYSTEM_PROMPT
from mmduet2.tokenizer import DEFAULT_SYSTEM_PROMPT, IM_END, IM_START, IMAGE_PAD, VIDEO_PAD, VISION_END, VISION_START


def _render_content(content):
    if isinstance(content, str):
        return content
    out = []
    for item in content:  # same precedence as the Jinja template: image, then video, then text
        if item.get("type") == "image" or "image" in item or "image_url" in item:
            out.append(VISION_START + IMAGE_PAD + VISION_END)
        elif item.get("type") == "video" or "video" in item:
            out.append(VISION_START + VIDEO_PAD + VISION_END)
        elif "text" in item:
            out.append(item["text"])
    return "".join(out)


def apply_chat_template(messages, add_generation_prompt=False) -> str:
    """Qwen2.5-VL's chat template: "<|im_start|>{role}\\n{content}<|im_end|>\\n" per message, a default system
    message when the first message is not one, and "<|im_start|>assistant\\n" to prompt a reply. Each image or
    video item becomes one pad between vision markers; `expand_vision_pads` widens it to its token count."""
    out = []
    for i, m in enumerate(messages):
        if i == 0 and m["role"] != "system":
            out.append(f"{IM_START}system\n{DEFAULT_SYSTEM_PROMPT}{IM_END}\n")
        out.append(f"{IM_START}{m['role']}\n{_render_content(m['content'])}{IM_END}\n")
    if add_generation_prompt:
        out.append(f"{IM_START}assistant\n")
    return "".join(out)


def expand_vision_pads(text, image_token_counts=(), video_token_counts=()):
    """Replace the k-th <|image_pad|> (<|video_pad|>) with image_token_counts[k] (video_token_counts[k]) pads,
    as Qwen's processor does with grid_thw.prod() // merge_size**2 tokens per picture."""
    for pad, counts in ((IMAGE_PAD, image_token_counts), (VIDEO_PAD, video_token_counts)):
        parts = text.split(pad)
        if len(parts) - 1 != len(counts):
            raise ValueError(f"the text has {len(parts) - 1} {pad} placeholders but {len(counts)} token counts were "
                             "given: pass one count per image/video, in order.")
        text = parts[0] + "".join(pad * int(n) + part for n, part in zip(counts, parts[1:]))
    return text


def to_messages(turns, system_prompt=SYSTEM_PROMPT):
    """The same dialogue as chat messages for `apply_chat_template` (one image item per frame)."""
    messages = [{"role": "system", "content": system_prompt}]
    for turn in turns:
        text = [{"type": "text", "text": turn.user_text}] if turn.user_text else []
        content = [{"type": "image"}] * len(turn.frame_indices) + text
        messages += [{"role": "user", "content": content}, {"role": "assistant", "content": turn.reply}]
    return messages
