"""Decoder-only transformer for `a ∘ b =` sequences, batched over an ensemble of runs.

Paper-faithful defaults (Power et al. 2022): 2 layers, d_model 128, 4 heads, FFN 512, causal
attention, no dropout, pre-LayerNorm, learned positions, untied unembedding. Seed 004's variant
(no LayerNorm, ReLU, 1 layer) is the same class with `layernorm: false, activation: relu`.

Sequences are 3–5 tokens long, so attention is written as broadcast products over the tiny
sequence axis rather than fused long-sequence kernels (which spend most of their time on
padding at this length); under torch.compile it fuses into a handful of kernels.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from grokpipe.models.base import EnsembleModel, Tensor, bmm, torch_linear_init
from grokpipe.models.configs import TransformerConfig

ACTIVATIONS = {"gelu": F.gelu, "relu": F.relu}


class Transformer(EnsembleModel):
    """Token + position embedding, `n_layers` attention/FFN blocks, unembedding."""

    shares_prefixes = True  # causal: `forward_prefixed` may compute shared prefixes once
    # tokens and classes: runs of tasks with other vocabularies (S5 beside mod 97) can share
    # an ensemble padded to the largest, their extra classes masked out (`EnsembleTrainer`)
    TASK_SIZES = {"embed": {1: "vocab_size"}, "unembed": {2: "n_classes"}}

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
            return torch.randn(shape, generator=gen) * self.cfg.embed_std
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

    def _attend(self, q: Tensor, k: Tensor, v: Tensor, mask: Tensor, i: int) -> Tensor:
        """Queries q [E, B, Tq, d] over keys/values [E, B, Tk, d]; mask [Tq, Tk] (True = may
        attend); then the output projection."""
        E, B, Tq, d = q.shape
        Tk = k.shape[2]
        H, dh = self.cfg.n_heads, d // self.cfg.n_heads
        q = q.reshape(E, B, Tq, 1, H, dh)
        k = k.reshape(E, B, 1, Tk, H, dh)
        # Under mixed precision q and k are bfloat16: their products are summed and softmaxed in
        # float32, which is what CUDA autocast does (`sum` and `softmax` are on its float32
        # list), so the explicit casts compute what torch.autocast computed.
        acc = torch.promote_types(q.dtype, torch.float32)
        scores = (q * k).to(acc).sum(-1) * dh**-0.5  # [E, B, Tq, Tk, H]
        att = scores.masked_fill(~mask[:, :, None], float("-inf")).softmax(dim=3)
        mixed = (att.unsqueeze(-1) * v.reshape(E, B, 1, Tk, H, dh)).sum(3)  # [E, B, Tq, H, dh]
        return self.mm(mixed.reshape(E, B, Tq, d), getattr(self, f"out_{i}"))

    def _attention(self, h: Tensor, i: int, last_only: bool) -> Tensor:
        d = h.shape[-1]
        w = getattr(self, f"qkv_{i}")
        mask = self.causal
        if last_only:  # only the last position's query is needed
            q = self.mm(h[:, :, -1:], w[..., :d])
            k, v = self.mm(h, w[..., d:]).split(d, dim=-1)
            mask = mask[-1:]
        else:
            q, k, v = self.mm(h, w).split(d, dim=-1)
        return self._attend(q, k, v, mask, i)

    def _ffn(self, h: Tensor, i: int) -> Tensor:
        act = ACTIVATIONS[self.cfg.activation]
        b1 = getattr(self, f"ff1b_{i}")
        b2 = getattr(self, f"ff2b_{i}")
        shape1 = (b1.shape[0],) + (1,) * (h.dim() - 2) + (b1.shape[-1],)
        shape2 = (b2.shape[0],) + (1,) * (h.dim() - 2) + (b2.shape[-1],)
        z = act(self.mm(h, getattr(self, f"ff1_{i}")) + b1.reshape(shape1))
        return self.mm(z, getattr(self, f"ff2_{i}")) + b2.reshape(shape2)

    def _stream(self, h: Tensor) -> Tensor:
        """The residual stream as stored: in `residual_dtype` where the probe set one."""
        return h if self.residual_dtype is None else h.to(self.residual_dtype)

    def _logits(self, h: Tensor) -> Tensor:
        """Final LayerNorm and unembedding, in float32 even when the blocks multiply in
        bfloat16: the late phase of grokking lives in small differences between large logits,
        which bfloat16's 8-bit mantissa would round away. It is a small part of the step (one
        position, d x classes)."""
        return bmm(self._ln(h, "lnf"), self.unembed)  # the residual stream is float32

    def forward(
        self, tokens: Tensor, last_only: bool = True, prefix: tuple[Tensor, Tensor] | None = None
    ) -> Tensor:
        """tokens [E, B, T] -> logits [E, B, C] (last position) or [E, B, T, C] (every one).

        With `prefix = (table, index)`, `tokens` holds only the last S positions of each
        sequence and its first P positions are row `index` [E, B] of `table` [E, U, P]
        (see `forward_prefixed`)."""
        if prefix is not None:
            if not last_only:
                raise ValueError("a shared prefix needs last_only (loss on the answer only)")
            return self.forward_prefixed(tokens, *prefix)
        h = self._stream(self.take(self.embed, tokens) + self.pos.unsqueeze(1))  # [E, B, T, d]
        n = self.cfg.n_layers
        for i in range(n):
            final = last_only and i == n - 1
            a = self._attention(self._ln(h, f"ln1_{i}"), i, final)
            h = self._stream((h[:, :, -1:] if final else h) + a)
            h = self._stream(h + self._ffn(self._ln(h, f"ln2_{i}"), i))
        logits = self._logits(h)
        return logits[:, :, -1] if last_only else logits

    def forward_prefixed(self, suffix: Tensor, table: Tensor, index: Tensor) -> Tensor:
        """Last-position logits [E, B, C] of sequences that share their first P tokens.

        Attention is causal, so the states of the first P positions depend only on those P
        tokens. In a binary-operation batch of 512 rows `x ∘ y =` there are only p distinct
        prefixes `x ∘`: their states (and the keys/values later positions read) are computed
        once per distinct prefix, on `table` [E, U, P], and gathered for each row, instead of
        once per row. The result is the same function as `forward`, at ~60 % of its FLOPs
        and activation memory for p = 97 and batch 512."""
        P = table.shape[2]
        d = self.cfg.d_model
        hp = self._stream(self.take(self.embed, table) + self.pos[:, :P].unsqueeze(1))  # [E,U,P,d]
        hs = self._stream(self.take(self.embed, suffix) + self.pos[:, P:].unsqueeze(1))  # [E,B,S,d]
        causal = self.causal
        n = self.cfg.n_layers
        for i in range(n):
            final = i == n - 1
            w = getattr(self, f"qkv_{i}")
            xp, xs = self._ln(hp, f"ln1_{i}"), self._ln(hs, f"ln1_{i}")
            if final:  # the prefix is only read, through its keys and values
                kp, vp = self.mm(xp, w[..., d:]).split(d, dim=-1)
            else:
                qp, kp, vp = self.mm(xp, w).split(d, dim=-1)
                hp = self._stream(hp + self._attend(qp, kp, vp, causal[:P, :P], i))
                hp = self._stream(hp + self._ffn(self._ln(hp, f"ln2_{i}"), i))
            k_rows = self.take(kp, index)  # [E, B, P, d]: each row's prefix
            v_rows = self.take(vp, index)
            if final:
                q = self.mm(xs[:, :, -1:], w[..., :d])
                ks, vs = self.mm(xs, w[..., d:]).split(d, dim=-1)
                mask = causal[-1:]
            else:
                q, ks, vs = self.mm(xs, w).split(d, dim=-1)
                mask = causal[P:]
            k = torch.cat([k_rows, ks], dim=2)
            v = torch.cat([v_rows, vs], dim=2)
            a = self._attend(q, k, v, mask, i)
            hs = self._stream((hs[:, :, -1:] if final else hs) + a)
            hs = self._stream(hs + self._ffn(self._ln(hs, f"ln2_{i}"), i))
        return self._logits(hs)[:, :, -1]
