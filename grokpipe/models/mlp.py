"""Multi-layer perceptrons, batched over an ensemble of runs.

One class covers both MLP families of the sources:
- seed 004's token MLP: embed each of the sequence's tokens (128 dims), concatenate, then
  512 → ReLU → 512 → ReLU → logits over the classes;
- seed 003's parity MLP: ±1 features n → h → 1 (Xavier init), and its 2–3-hidden-layer variants.
Token inputs are recognised by the task's `vocab_size`; feature inputs by `input_dim`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from grokpipe.models.base import EnsembleModel, Tensor, torch_linear_init, xavier_uniform
from grokpipe.models.configs import MLPConfig

ACTIVATIONS = {"relu": F.relu, "gelu": F.gelu, "tanh": torch.tanh}


class MLP(EnsembleModel):
    def __init__(self, cfg: MLPConfig, info: dict, n_members: int):
        super().__init__(n_members)
        self.cfg = cfg
        self.tokens = "vocab_size" in info
        if self.tokens:
            self.embed = self.new_param(info["vocab_size"], cfg.d_embed)
            width = info["seq_len"] * cfg.d_embed
        else:
            width = info["input_dim"]
        self.n_classes = info["n_classes"]
        widths = [width, *cfg.hidden, self.n_classes]
        self.n_linear = len(widths) - 1
        for i in range(self.n_linear):
            setattr(self, f"w{i}", self.new_param(widths[i], widths[i + 1]))
            if cfg.bias:
                setattr(self, f"b{i}", self.new_param(widths[i + 1]))

    def initial_value(self, name, shape, gen):
        if name == "embed":
            return torch.randn(shape, generator=gen)
        if name.startswith("b"):
            if self.cfg.init == "xavier":
                return torch.zeros(shape)
            fan_in = getattr(self, "w" + name[1:]).shape[1]
            return torch_linear_init(fan_in, shape, gen)
        if self.cfg.init == "xavier":
            return xavier_uniform(shape[0], shape[1], shape, gen)
        return torch_linear_init(shape[0], shape, gen)

    def layer_groups(self):
        groups = [("embed", ["embed"])] if self.tokens else []
        for i in range(self.n_linear):
            groups.append((f"layer{i}", [f"w{i}"] + ([f"b{i}"] if self.cfg.bias else [])))
        return groups

    def embedding_for_med(self, params):
        return params["embed"] if self.tokens else None

    def hidden_activations(self, x: Tensor) -> Tensor:
        """First hidden layer's post-activation output (the MED probe for fixed embeddings)."""
        return self._layers(x, stop_after=1)

    def _layers(self, x: Tensor, stop_after: int | None = None) -> Tensor:
        h = self.take(self.embed, x).flatten(2) if self.tokens else x  # tokens: [E, B, T*d]
        act = ACTIVATIONS[self.cfg.activation]
        for i in range(self.n_linear):
            h = self.mm(h, getattr(self, f"w{i}"))
            if self.cfg.bias:
                h = h + getattr(self, f"b{i}").unsqueeze(1)
            if i < self.n_linear - 1:
                h = act(h)
            if stop_after is not None and i + 1 == stop_after:
                return h
        return h

    def forward(self, x: Tensor, last_only: bool = True) -> Tensor:
        """x [E, B, T] tokens or [E, B, n] features -> [E, B, C] logits ([E, B] when C = 1)."""
        out = self._layers(x)
        return out.squeeze(-1) if self.n_classes == 1 else out
