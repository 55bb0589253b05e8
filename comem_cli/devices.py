"""The one CUDA check: which device the memory backends, the training stages and the GRPO policy
load a model on, and what `--memory-backend auto` and the default memory model pick.

torch is imported on the first call, never at import: `comem --help` and the CPU-only paths stay fast.
"""

from __future__ import annotations


def cuda_available() -> bool:
    """True when torch sees a CUDA device; False when torch is missing, CPU-only or cannot ask the driver."""
    try:
        import torch
    except Exception:  # torch not installed (comem without its memory extras)
        return False
    try:
        return bool(torch.cuda.is_available())
    except Exception:  # a broken driver answers with an error rather than False
        return False
