"""Qwen2.5-VL text side: a thin wrapper over a `tokenizers` tokenizer.json and a toy tokenizer trainer
(docs/method.md section 2, "Tokenizer").

`Tokenizer` loads the tokenizer.json of a Qwen2.5-VL checkpoint (or one written by `train_toy_tokenizer`) and
looks every special-token id up by name, so ids never drift between files. `train_toy_tokenizer` builds the
same pipeline as Qwen2's tokenizer (NFC, Qwen2's split regex, byte-level BPE, special tokens appended after
the learned vocabulary) with a tiny vocabulary for toy models. The chat template itself is only needed by the
tests (tests/chat_template.py), which check that dialogue.py's chunks render the same text.
"""
import os

from tokenizers import AddedToken, Regex, decoders, models, normalizers, pre_tokenizers, processors, trainers
from tokenizers import Tokenizer as HFTokenizer

# attribute -> token. Order as in Qwen's vocabulary (Qwen has more specials in between; we need only these).
SPECIAL_TOKENS = {
    "endoftext_id": "<|endoftext|>", "im_start_id": "<|im_start|>", "im_end_id": "<|im_end|>",
    "vision_start_id": "<|vision_start|>", "vision_end_id": "<|vision_end|>",
    "image_pad_id": "<|image_pad|>", "video_pad_id": "<|video_pad|>",
}
IM_START, IM_END = "<|im_start|>", "<|im_end|>"
VISION_START, VISION_END = "<|vision_start|>", "<|vision_end|>"
IMAGE_PAD, VIDEO_PAD = "<|image_pad|>", "<|video_pad|>"
DEFAULT_SYSTEM_PROMPT = "You are a helpful assistant."

# Qwen2's pre-tokenizer split (from its tokenizer.json). Note `\s*[\r\n]+`: a newline is its own piece, never
# glued to the letters after it, so "assistant\n" and a reply encode the same apart as together (streaming
# appends them in separate chunks).
QWEN_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
              r"|\s*[\r\n]+|\s+(?!\S)|\s+")


class Tokenizer:
    """tokenizer.json with Qwen's special tokens; `encode` recognises them, `decode` can drop them."""

    def __init__(self, tk: HFTokenizer, source="tokenizer"):
        self.tk = tk
        # A special token must exist and encode as one id; otherwise "<|im_end|>" would split into bytes.
        bad = [t for t in SPECIAL_TOKENS.values()
               if tk.token_to_id(t) is None or tk.encode(t, add_special_tokens=False).ids != [tk.token_to_id(t)]]
        if bad:
            raise ValueError(f"{source} lacks the special tokens {', '.join(bad)} (or does not treat them as single "
                             "added tokens): use a Qwen2.5-VL tokenizer.json or one made by train_toy_tokenizer.")
        for attr, token in SPECIAL_TOKENS.items():
            setattr(self, attr, tk.token_to_id(token))
        self.vocab_size = tk.get_vocab_size(with_added_tokens=True)

    @classmethod
    def from_file(cls, path):
        path = os.fspath(path)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"tokenizer file {path} does not exist: pass the path of a tokenizer.json.")
        try:
            tk = HFTokenizer.from_file(path)
        except Exception as e:  # tokenizers raises a bare Exception with a serde message
            raise ValueError(f"{path} is not a valid tokenizer.json ({e}): use the tokenizer.json of a checkpoint "
                             "or one written by Tokenizer.save.") from None
        return cls(tk, source=path)

    @classmethod
    def from_dir(cls, directory):
        return cls.from_file(os.path.join(directory, "tokenizer.json"))

    def save(self, directory):
        os.makedirs(directory, exist_ok=True)
        path = os.path.join(directory, "tokenizer.json")
        self.tk.save(path)
        return path

    def encode(self, text) -> list[int]:
        return self.tk.encode(text, add_special_tokens=False).ids

    def decode(self, ids, skip_special_tokens=True) -> str:
        return self.tk.decode(list(ids), skip_special_tokens=skip_special_tokens)


def qwen_pipeline(tk: HFTokenizer):
    """Give a BPE tokenizer Qwen2's normaliser, pre-tokenizer, post-processor and decoder (as in its tokenizer.json)."""
    tk.normalizer = normalizers.NFC()
    tk.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(QWEN_SPLIT), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False)])
    tk.post_processor = processors.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False)
    tk.decoder = decoders.ByteLevel()
    return tk


def train_toy_tokenizer(texts, vocab_size=512) -> Tokenizer:
    """Byte-level BPE learned on `texts`, with Qwen's pipeline and special tokens; `vocab_size` counts the
    256 byte symbols, the merges and the specials (fewer merges if the texts run out of pairs). Any text
    round-trips, since every byte is in the alphabet."""
    n_special = len(SPECIAL_TOKENS)
    if vocab_size < 256 + n_special:
        raise ValueError(f"vocab_size={vocab_size} is too small: a byte-level tokenizer needs at least "
                         f"{256 + n_special} (256 bytes + {n_special} special tokens).")
    tk = qwen_pipeline(HFTokenizer(models.BPE()))
    trainer = trainers.BpeTrainer(vocab_size=vocab_size - n_special, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tk.train_from_iterator(list(texts), trainer)
    # Appended after training so, as in Qwen, the special ids follow the learned vocabulary.
    tk.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in SPECIAL_TOKENS.values()])
    return Tokenizer(tk, source="toy tokenizer")
