"""mmduet2: a compact PyTorch reimplementation of MMDuet2, the streaming video model that decides at every
turn whether to speak or stay silent, trained with SFT and then multi-turn GRPO on a timing-aware reward.

Start reading at model.py (Qwen2.5-VL), stream.py (the streaming loop), rewards.py and grpo.py (the RL).
"""
from .config import ModelConfig, preset
from .model import MMDuet2

__all__ = ["MMDuet2", "ModelConfig", "preset"]
