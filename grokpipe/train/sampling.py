"""Counter-based minibatch sampling: which training examples member e sees at step s.

The batch is a pure function of (run seed, step, slot), computed on the device with integer
hashing. No generator state advances, so (a) a run sees the same batches whether it trains alone
or in an ensemble of 256, on any GPU, (b) the step can be captured in a CUDA graph and replayed,
and (c) a resumed run needs only its step counter. Examples are drawn uniformly with
replacement from the run's training set; with B ≪ n_train this matches shuffled epochs in
distribution to within the usual SGD noise.
"""

from __future__ import annotations

import torch

_M32 = 0xFFFFFFFF
_MUL = 0x045D9F3B  # < 2**27, so products of 32-bit values stay inside int64
_SAMPLING_STREAM = 0x5EED


def mix32(x: torch.Tensor) -> torch.Tensor:
    """A 32-bit integer avalanche hash on int64 tensors holding values in [0, 2**32)."""
    x = (((x >> 16) ^ x) * _MUL) & _M32
    x = (((x >> 16) ^ x) * _MUL) & _M32
    return (x >> 16) ^ x


def stream_keys(seeds: torch.Tensor) -> torch.Tensor:
    """Per-member key of the sampling stream, [E] int64, from the run seeds."""
    return mix32((mix32(seeds & _M32) + _SAMPLING_STREAM) & _M32)


def sample_positions(
    keys: torch.Tensor, step: torch.Tensor, batch: int, n_train: torch.Tensor
) -> torch.Tensor:
    """[E, batch] positions into each member's training list for the update at `step`.

    keys: [E] from `stream_keys`; step: 0-dim int64 tensor; n_train: [E] int64 (≥ 1).
    """
    slots = torch.arange(batch, device=keys.device, dtype=torch.int64)
    h = mix32((keys + mix32(step & _M32)) & _M32)  # [E]
    h = mix32((h.unsqueeze(1) + slots * 0x9E37) & _M32)  # [E, B]
    h = mix32(h ^ 0x2545F491)
    return h % n_train.unsqueeze(1)
