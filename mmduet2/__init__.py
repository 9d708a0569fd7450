"""mmduet2: a compact PyTorch reimplementation of MMDuet2 (proactive streaming video chat, SFT + multi-turn GRPO)."""
