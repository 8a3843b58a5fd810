"""Multi-layer perceptrons, batched over an ensemble of runs.

One class covers both MLP families of the sources:
- seed 004's token MLP: embed each of the sequence's tokens (128 dims), concatenate, then
  512 → ReLU → 512 → ReLU → logits over the classes;
- seed 003's parity MLP: ±1 features n → h → 1 (Xavier init), and its 2–3-hidden-layer variants.
Token inputs are recognised by the task's `vocab_size`; feature inputs by `input_dim`.

With seed 004's fixed one-hot embedding the embedding cannot move, so the mean embedding
difference is read one layer up, as the source does: the first hidden layer's activations for
the inputs whose two operands are equal, `[i, i + d, =]`, walked from one value i to the next
(the task's `med_diagonal` rows).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from grokpipe.config.schema import ConfigError
from grokpipe.models.base import EnsembleModel, Tensor, torch_linear_init, xavier_uniform
from grokpipe.models.configs import MLPConfig

ACTIVATIONS = {"relu": F.relu, "gelu": F.gelu, "tanh": torch.tanh}


class MLP(EnsembleModel):
    def __init__(self, cfg: MLPConfig, info: dict, n_members: int):
        super().__init__(n_members)
        self.cfg = cfg
        self.tokens = "vocab_size" in info
        self.one_hot = self.tokens and cfg.embedding == "one_hot"
        if self.one_hot:
            # the source pads a d_model x vocab identity with zeros, which maps every token past
            # d_model to the zero vector; here each token keeps a unit vector of its own
            vocab = info["vocab_size"]
            if cfg.d_embed < vocab:
                raise ConfigError(
                    "model.d_embed",
                    f"the one-hot embedding needs at least one dimension per token ({vocab}), "
                    f"got {cfg.d_embed}",
                )
            # [E, vocab, T]: each member's diagonal inputs (one per operand value, so at most
            # one per token), padded with its first row
            self.register_buffer(
                "med_inputs", torch.zeros(n_members, vocab, info["seq_len"], dtype=torch.long)
            )
        elif self.tokens:
            self.embed = self.new_param(info["vocab_size"], cfg.d_embed)
        width = info["seq_len"] * cfg.d_embed if self.tokens else info["input_dim"]
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

    def init_member(self, i, gen, init_scale=1.0, info=None):
        super().init_member(i, gen, init_scale, info)
        if self.one_hot:
            diagonal = torch.as_tensor((info or {}).get("med_diagonal") or [[0]], dtype=torch.long)
            self.med_inputs[i] = diagonal[0]
            self.med_inputs[i, : len(diagonal)] = diagonal

    def med_ranges(self, info):
        if not self.one_hot:
            return super().med_ranges(info)
        diagonal = info.get("med_diagonal")
        return [[0, len(diagonal)]] if diagonal else None

    def layer_groups(self):
        groups = [("embed", ["embed"])] if self.tokens and not self.one_hot else []
        for i in range(self.n_linear):
            groups.append((f"layer{i}", [f"w{i}"] + ([f"b{i}"] if self.cfg.bias else [])))
        return groups

    def embedding_for_med(self, params):
        if self.one_hot:  # rows: the diagonal inputs, in value order (`med_ranges`)
            return self.hidden_activations(self.med_inputs)
        return params["embed"] if self.tokens else None

    def hidden_activations(self, x: Tensor) -> Tensor:
        """First hidden layer's post-activation output (the MED probe for fixed embeddings)."""
        return self._layers(x, stop_after=1)

    def _layers(self, x: Tensor, stop_after: int | None = None) -> Tensor:
        if self.one_hot:
            # a comparison, not F.one_hot: that one checks its input's range on the host, a
            # graph break in the compiled step
            units = torch.arange(self.cfg.d_embed, device=x.device)
            h = (x.unsqueeze(-1) == units).to(self.w0.dtype).flatten(2)
        elif self.tokens:
            h = self.take(self.embed, x).flatten(2)  # [E, B, T*d]
        else:
            h = x
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
