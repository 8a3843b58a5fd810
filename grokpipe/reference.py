"""The yardstick: a plain eager PyTorch training loop of the Power et al. transformer.

This is how grokking is usually trained (nn.Module, torch.optim.AdamW, minibatches indexed on
the device, an evaluation with a host sync every 100 steps). The benchmark measures the engine
against it in the same process; nothing in the pipeline uses it.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


class Block(nn.Module):
    def __init__(self, d: int, heads: int, d_ff: int):
        super().__init__()
        self.heads = heads
        self.ln1, self.ln2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.qkv = nn.Linear(d, 3 * d, bias=False)
        self.proj = nn.Linear(d, d, bias=False)
        self.ff = nn.Sequential(nn.Linear(d, d_ff), nn.GELU(), nn.Linear(d_ff, d))
        for layer in (self.ff[0], self.ff[2]):  # the engine's transformer starts them at zero
            nn.init.zeros_(layer.bias)

    def forward(self, h):
        B, T, d = h.shape
        q, k, v = self.qkv(self.ln1(h)).split(d, dim=-1)
        q, k, v = (t.reshape(B, T, self.heads, d // self.heads).transpose(1, 2) for t in (q, k, v))
        a = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        h = h + self.proj(a.transpose(1, 2).reshape(B, T, d))
        return h + self.ff(self.ln2(h))


class ReferenceTransformer(nn.Module):
    def __init__(
        self,
        vocab: int,
        n_classes: int,
        seq_len: int = 4,
        d: int = 128,
        heads: int = 4,
        d_ff: int = 512,
        layers: int = 2,
    ):
        super().__init__()
        self.tok = nn.Embedding(vocab, d)
        self.pos = nn.Embedding(seq_len, d)
        self.blocks = nn.ModuleList(Block(d, heads, d_ff) for _ in range(layers))
        self.ln = nn.LayerNorm(d)
        self.head = nn.Linear(d, n_classes, bias=False)

    def forward(self, x):
        h = self.tok(x) + self.pos(torch.arange(x.shape[1], device=x.device))
        for block in self.blocks:
            h = block(h)
        return self.head(self.ln(h))[:, -1]


@dataclass
class ReferenceResult:
    steps: int
    seconds: float
    val_acc: float
    reached: bool


def train_reference(
    data,
    train_idx,
    val_idx,
    steps: int,
    device: str,
    seed: int = 0,
    eval_every: int = 100,
    stop_at: float | None = None,
    batch: int = 512,
    precision: str = "fp32",
    **model_kw,
) -> ReferenceResult:
    """Train for `steps` (or until validation accuracy ≥ stop_at); wall time excludes setup.

    `precision` as the engine's `train.precision`: "bf16" runs the forward and the loss under
    torch.autocast in bfloat16 (the policy the engine writes out: products in bfloat16,
    weights and optimiser in float32); "tf32" and "fp32" leave the float32 matmul precision
    to the caller (`torch.set_float32_matmul_precision`), as the engine's step sets it."""
    torch.manual_seed(seed)
    dev = torch.device(device)
    X = torch.as_tensor(data.inputs, device=dev)
    Y = torch.as_tensor(data.targets, device=dev)
    tr = torch.as_tensor(train_idx, device=dev)
    va = torch.as_tensor(val_idx, device=dev)
    model = ReferenceTransformer(
        data.info["vocab_size"], data.info["n_classes"], data.info["seq_len"], **model_kw
    ).to(dev)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, betas=(0.9, 0.98), weight_decay=1.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / 10))
    B = min(batch, len(train_idx) // 2)
    val_acc = 0.0
    mixed = torch.autocast(dev.type, dtype=torch.bfloat16, enabled=precision == "bf16")
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
    t0 = time.perf_counter()
    step = 0
    for step in range(1, steps + 1):
        idx = tr[torch.randint(len(tr), (B,), device=dev)]
        with mixed:
            loss = F.cross_entropy(model(X[idx]), Y[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        if step % eval_every == 0:
            with torch.no_grad(), mixed:
                val_acc = (model(X[va]).argmax(-1) == Y[va]).float().mean().item()
            if stop_at is not None and val_acc >= stop_at:
                break
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
    seconds = time.perf_counter() - t0
    return ReferenceResult(step, seconds, val_acc, stop_at is not None and val_acc >= stop_at)
