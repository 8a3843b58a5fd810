"""Model families' configuration dataclasses: what `model:` in params.yaml may say.

Kept free of torch, so that the stages that only read configs and runs (the analyses) start
without importing it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from grokpipe.config.schema import check


@dataclass(frozen=True)
class TransformerConfig:
    n_layers: int = 2
    d_model: int = 128
    n_heads: int = 4
    d_ff: int = 512
    layernorm: bool = True
    activation: Literal["gelu", "relu"] = "gelu"
    init_scale: float = 1.0
    # initial std of the token and position embeddings: 1 is N(0, 1), which LayerNorm tames;
    # without LayerNorm the residual stream then starts at norm ~√d_model, and 1/√d_model
    # (Nanda et al.'s LayerNorm-free code) starts it at ~1
    embed_std: float = 1.0

    def validate(self, key: str) -> None:
        check(self.n_layers >= 1, f"{key}.n_layers", "must be at least 1")
        check(self.embed_std > 0, f"{key}.embed_std", "must be positive")
        check(self.d_model >= 1, f"{key}.d_model", "must be positive")
        check(self.n_heads >= 1, f"{key}.n_heads", "must be positive")
        check(
            self.d_model % self.n_heads == 0,
            f"{key}.n_heads",
            f"must divide d_model ({self.d_model})",
        )
        check(self.d_ff >= 1, f"{key}.d_ff", "must be positive")
        check(self.init_scale > 0, f"{key}.init_scale", "must be positive")


@dataclass(frozen=True)
class MLPConfig:
    hidden: list[int] = field(default_factory=lambda: [512, 512])
    d_embed: int = 128
    # token inputs: `learned` embeddings, or seed 004's fixed `one_hot` (token t is the unit
    # vector e_t of d_embed dims, never trained; the MED probe then reads the first hidden layer)
    embedding: Literal["learned", "one_hot"] = "learned"
    activation: Literal["relu", "gelu", "tanh"] = "relu"
    init: Literal["torch", "xavier"] = "torch"
    bias: bool = True
    init_scale: float = 1.0

    def validate(self, key: str) -> None:
        check(len(self.hidden) >= 1, f"{key}.hidden", "needs at least one hidden layer")
        check(all(h >= 1 for h in self.hidden), f"{key}.hidden", "widths must be positive")
        check(self.d_embed >= 1, f"{key}.d_embed", "must be positive")
        check(self.init_scale > 0, f"{key}.init_scale", "must be positive")
