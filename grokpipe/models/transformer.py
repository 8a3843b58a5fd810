"""Decoder-only transformer for `a ∘ b =` sequences, batched over an ensemble of runs.

Paper-faithful defaults (Power et al. 2022): 2 layers, d_model 128, 4 heads, FFN 512, causal
attention, no dropout, pre-LayerNorm, learned positions, untied unembedding. Seed 004's variant
(no LayerNorm, ReLU, 1 layer) is the same class with `layernorm: false, activation: relu`.

Sequences are 3–5 tokens long, so attention is written as broadcast products over the tiny
sequence axis rather than fused long-sequence kernels (which spend most of their time on
padding at this length); under torch.compile it fuses into a handful of kernels.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F

from grokpipe.config.schema import check
from grokpipe.models.base import EnsembleModel, Tensor, bmm, torch_linear_init


@dataclass(frozen=True)
class TransformerConfig:
    n_layers: int = 2
    d_model: int = 128
    n_heads: int = 4
    d_ff: int = 512
    layernorm: bool = True
    activation: Literal["gelu", "relu"] = "gelu"
    init_scale: float = 1.0

    def validate(self, key: str) -> None:
        check(self.n_layers >= 1, f"{key}.n_layers", "must be at least 1")
        check(self.d_model >= 1, f"{key}.d_model", "must be positive")
        check(self.n_heads >= 1, f"{key}.n_heads", "must be positive")
        check(
            self.d_model % self.n_heads == 0,
            f"{key}.n_heads",
            f"must divide d_model ({self.d_model})",
        )
        check(self.d_ff >= 1, f"{key}.d_ff", "must be positive")
        check(self.init_scale > 0, f"{key}.init_scale", "must be positive")


ACTIVATIONS = {"gelu": F.gelu, "relu": F.relu}


class Transformer(EnsembleModel):
    """Token + position embedding, `n_layers` attention/FFN blocks, unembedding."""

    def __init__(self, cfg: TransformerConfig, info: dict, n_members: int):
        super().__init__(n_members)
        self.cfg = cfg
        d, V, T = cfg.d_model, info["vocab_size"], info["seq_len"]
        self.n_classes = info["n_classes"]
        self.embed = self.new_param(V, d)
        self.pos = self.new_param(T, d)
        for i in range(cfg.n_layers):
            if cfg.layernorm:
                setattr(self, f"ln1_{i}_w", self.new_param(d))
                setattr(self, f"ln1_{i}_b", self.new_param(d))
                setattr(self, f"ln2_{i}_w", self.new_param(d))
                setattr(self, f"ln2_{i}_b", self.new_param(d))
            setattr(self, f"qkv_{i}", self.new_param(d, 3 * d))
            setattr(self, f"out_{i}", self.new_param(d, d))
            setattr(self, f"ff1_{i}", self.new_param(d, cfg.d_ff))
            setattr(self, f"ff1b_{i}", self.new_param(cfg.d_ff))
            setattr(self, f"ff2_{i}", self.new_param(cfg.d_ff, d))
            setattr(self, f"ff2b_{i}", self.new_param(d))
        if cfg.layernorm:
            self.lnf_w = self.new_param(d)
            self.lnf_b = self.new_param(d)
        self.unembed = self.new_param(d, self.n_classes)
        self.register_buffer("causal", torch.tril(torch.ones(T, T, dtype=torch.bool)))

    def initial_value(self, name, shape, gen):
        if name in ("embed", "pos"):
            return torch.randn(shape, generator=gen)
        if name.startswith("ln") and name.endswith("_w"):
            return torch.ones(shape)
        if name.startswith("ln") or name.startswith("ff1b") or name.startswith("ff2b"):
            return torch.zeros(shape)
        return torch_linear_init(shape[0], shape, gen)  # [in, out] weights: fan_in = in

    def scaled_by_init_scale(self, name):
        return not name.startswith("ln")

    def layer_groups(self):
        groups = [("embed", ["embed", "pos"])]
        for i in range(self.cfg.n_layers):
            names = [n for n, _ in self.named_parameters() if n.endswith(f"_{i}") or f"_{i}_" in n]
            groups.append((f"block{i}", names))
        head = ["unembed"] + (["lnf_w", "lnf_b"] if self.cfg.layernorm else [])
        groups.append(("unembed", head))
        return groups

    def embedding_for_med(self, params):
        return params["embed"]

    def _ln(self, x: Tensor, name: str) -> Tensor:
        if not self.cfg.layernorm:
            return x
        w, b = getattr(self, f"{name}_w"), getattr(self, f"{name}_b")
        y = F.layer_norm(x, x.shape[-1:])
        shape = (w.shape[0],) + (1,) * (x.dim() - 2) + (w.shape[-1],)
        return y * w.reshape(shape) + b.reshape(shape)

    def _attention(self, h: Tensor, i: int, last_only: bool) -> Tensor:
        E, B, T, d = h.shape
        H, dh = self.cfg.n_heads, d // self.cfg.n_heads
        q, k, v = bmm(h, getattr(self, f"qkv_{i}")).split(d, dim=-1)
        mask = self.causal
        if last_only:
            q, mask = q[:, :, -1:], mask[-1:]
        Tq = q.shape[2]
        q = q.reshape(E, B, Tq, 1, H, dh)
        k = k.reshape(E, B, 1, T, H, dh)
        scores = (q * k).sum(-1) * dh**-0.5  # [E, B, Tq, T, H]
        att = scores.masked_fill(~mask[:, :, None], float("-inf")).softmax(dim=3)
        mixed = (att.unsqueeze(-1) * v.reshape(E, B, 1, T, H, dh)).sum(3)  # [E, B, Tq, H, dh]
        return bmm(mixed.reshape(E, B, Tq, d), getattr(self, f"out_{i}"))

    def _ffn(self, h: Tensor, i: int) -> Tensor:
        act = ACTIVATIONS[self.cfg.activation]
        b1 = getattr(self, f"ff1b_{i}")
        b2 = getattr(self, f"ff2b_{i}")
        shape1 = (b1.shape[0],) + (1,) * (h.dim() - 2) + (b1.shape[-1],)
        shape2 = (b2.shape[0],) + (1,) * (h.dim() - 2) + (b2.shape[-1],)
        z = act(bmm(h, getattr(self, f"ff1_{i}")) + b1.reshape(shape1))
        return bmm(z, getattr(self, f"ff2_{i}")) + b2.reshape(shape2)

    def forward(self, tokens: Tensor, last_only: bool = True) -> Tensor:
        """tokens [E, B, T] -> logits [E, B, C] (last position) or [E, B, T, C] (every one)."""
        E = tokens.shape[0]
        member = torch.arange(E, device=tokens.device).reshape(E, 1, 1)
        h = self.embed[member, tokens] + self.pos.unsqueeze(1)  # [E, B, T, d]
        n = self.cfg.n_layers
        for i in range(n):
            final = last_only and i == n - 1
            a = self._attention(self._ln(h, f"ln1_{i}"), i, final)
            h = (h[:, :, -1:] if final else h) + a
            h = h + self._ffn(self._ln(h, f"ln2_{i}"), i)
        h = self._ln(h, "lnf")
        logits = bmm(h, self.unembed)
        return logits[:, :, -1] if last_only else logits
