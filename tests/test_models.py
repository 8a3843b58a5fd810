"""Ensemble models: output shapes, member independence, per-member seeded initialisation."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from grokpipe.models import MODELS, build_model
from grokpipe.models.mlp import MLPConfig
from grokpipe.models.transformer import TransformerConfig

TOKEN_INFO = {"vocab_size": 13, "seq_len": 4, "n_classes": 13}  # x+y mod 11
FEATURE_INFO = {"input_dim": 10, "n_classes": 1}  # parity-style ±1 features
B = 5


def tokens(E: int, info: dict = TOKEN_INFO, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, info["vocab_size"], (E, B, info["seq_len"]), generator=g)


def features(E: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 2, (E, B, FEATURE_INFO["input_dim"]), generator=g).float() * 2 - 1


def init_all(model, seeds) -> None:
    for i, s in enumerate(seeds):
        model.init_member(i, torch.Generator().manual_seed(s))


def transformer(E: int, **kw):
    cfg = TransformerConfig(**{"n_layers": 2, "d_model": 16, "n_heads": 4, "d_ff": 32, **kw})
    model = build_model("transformer", cfg, TOKEN_INFO, E)
    init_all(model, range(100, 100 + E))
    return model


def mlp(E: int, info: dict, **kw):
    model = build_model("mlp", MLPConfig(**{"hidden": [24, 24], "d_embed": 8, **kw}), info, E)
    init_all(model, range(100, 100 + E))
    return model


# --- shapes --------------------------------------------------------------------------------


@pytest.mark.parametrize("E", [1, 3])
@pytest.mark.parametrize("layernorm", [True, False])
@pytest.mark.parametrize("activation", ["relu", "gelu"])
def test_transformer_shapes(E, layernorm, activation):
    model = transformer(E, layernorm=layernorm, activation=activation)
    x = tokens(E)
    with torch.no_grad():
        last = model(x, last_only=True)
        every = model(x, last_only=False)
    C, T = TOKEN_INFO["n_classes"], TOKEN_INFO["seq_len"]
    assert last.shape == (E, B, C)
    assert every.shape == (E, B, T, C)
    assert torch.isfinite(every).all()
    # the last-position shortcut computes exactly the last position of the full pass
    torch.testing.assert_close(last, every[:, :, -1], rtol=1e-5, atol=1e-5)


def test_transformer_has_layernorm_parameters_only_when_asked():
    with_ln = {n for n, _ in transformer(1, layernorm=True).named_parameters()}
    without = {n for n, _ in transformer(1, layernorm=False).named_parameters()}
    assert {"lnf_w", "lnf_b", "ln1_0_w", "ln2_1_b"} <= with_ln
    assert not any(n.startswith("ln") for n in without)
    assert without < with_ln


def test_transformer_is_causal():
    """Changing the last token must not change the outputs at earlier positions."""
    model = transformer(1)
    x = tokens(1)
    y = x.clone()
    y[:, :, -1] = (y[:, :, -1] + 1) % TOKEN_INFO["vocab_size"]
    with torch.no_grad():
        a, b = model(x, last_only=False), model(y, last_only=False)
    torch.testing.assert_close(a[:, :, :-1], b[:, :, :-1])
    assert not torch.allclose(a[:, :, -1], b[:, :, -1])


@pytest.mark.parametrize("E", [1, 3])
def test_mlp_token_shapes(E):
    model = mlp(E, TOKEN_INFO)
    with torch.no_grad():
        out = model(tokens(E))
    assert out.shape == (E, B, TOKEN_INFO["n_classes"])
    assert model.embed.shape == (E, TOKEN_INFO["vocab_size"], 8)
    assert model.w0.shape == (E, TOKEN_INFO["seq_len"] * 8, 24)
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("E", [1, 3])
@pytest.mark.parametrize("init", ["torch", "xavier"])
def test_mlp_feature_shapes_single_output(E, init):
    model = mlp(E, FEATURE_INFO, init=init, hidden=[16])
    with torch.no_grad():
        out = model(features(E))
        hidden = model.hidden_activations(features(E))
    assert out.shape == (E, B)  # n_classes 1: one score per example
    assert hidden.shape == (E, B, 16)
    assert (hidden >= 0).all()  # post-ReLU
    assert not hasattr(model, "embed")
    assert torch.isfinite(out).all()


# --- members are independent ---------------------------------------------------------------


def _member_independence(model, x):
    with torch.no_grad():
        before = model(x)
        for p in model.parameters():
            p[1].add_(torch.randn_like(p[1]))
        after = model(x)
    torch.testing.assert_close(after[0], before[0], rtol=0, atol=0)
    torch.testing.assert_close(after[2], before[2], rtol=0, atol=0)
    assert not torch.allclose(after[1], before[1])


@pytest.mark.parametrize("layernorm", [True, False])
def test_transformer_members_are_independent(layernorm):
    _member_independence(transformer(3, layernorm=layernorm), tokens(3))


def test_mlp_members_are_independent():
    _member_independence(mlp(3, TOKEN_INFO), tokens(3))
    _member_independence(mlp(3, FEATURE_INFO), features(3))


def test_members_see_their_own_inputs():
    """Member e reads input slice e only: a change to member 1's inputs leaves member 0 alone."""
    model = transformer(3)
    x = tokens(3)
    y = x.clone()
    y[1] = (y[1] + 1) % TOKEN_INFO["vocab_size"]
    with torch.no_grad():
        a, b = model(x), model(y)
    torch.testing.assert_close(a[0], b[0], rtol=0, atol=0)
    torch.testing.assert_close(a[2], b[2], rtol=0, atol=0)
    assert not torch.allclose(a[1], b[1])


# --- seeded initialisation -----------------------------------------------------------------


def _params(model, i):
    return {n: p[i].detach().clone() for n, p in model.named_parameters()}


@pytest.mark.parametrize(
    ("family", "cfg", "info"),
    [
        ("transformer", TransformerConfig(n_layers=1, d_model=16, n_heads=2, d_ff=32), TOKEN_INFO),
        ("transformer", TransformerConfig(n_layers=2, d_model=8, layernorm=False), TOKEN_INFO),
        ("mlp", MLPConfig(hidden=[12, 12], d_embed=4), TOKEN_INFO),
        ("mlp", MLPConfig(hidden=[12], init="xavier", bias=False), FEATURE_INFO),
    ],
    ids=["transformer-ln", "transformer-noln", "mlp-tokens", "mlp-features"],
)
def test_init_member_is_seeded_and_independent_of_ensemble_size(family, cfg, info):
    seed = 1234
    single = build_model(family, cfg, info, 1)
    single.init_member(0, torch.Generator().manual_seed(seed))
    again = build_model(family, cfg, info, 1)
    again.init_member(0, torch.Generator().manual_seed(seed))
    for name, value in _params(single, 0).items():
        torch.testing.assert_close(_params(again, 0)[name], value, rtol=0, atol=0)
    x = tokens(1, info) if "vocab_size" in info else features(1)
    for i in range(3):
        ens = build_model(family, cfg, info, 3)
        seeds = [7, 8, 9]
        seeds[i] = seed
        init_all(ens, seeds)
        for name, value in _params(single, 0).items():
            torch.testing.assert_close(_params(ens, i)[name], value, rtol=0, atol=0)
        # and the member computes what the single model computes
        with torch.no_grad():
            torch.testing.assert_close(ens(x.expand(3, *x.shape[1:]))[i], single(x)[0])


def test_different_seeds_give_different_weights():
    model = build_model("transformer", TransformerConfig(d_model=8, n_heads=2), TOKEN_INFO, 2)
    init_all(model, [1, 2])
    assert not torch.equal(model.embed[0], model.embed[1])
    assert not torch.equal(model.qkv_0[0], model.qkv_0[1])
    # LayerNorm gains start at one, biases at zero, in every member
    assert torch.equal(model.ln1_0_w, torch.ones_like(model.ln1_0_w))
    assert torch.equal(model.ff1b_0, torch.zeros_like(model.ff1b_0))


def test_init_scale_multiplies_weights_not_layernorm():
    cfg = TransformerConfig(n_layers=1, d_model=8, n_heads=2, d_ff=16)
    a = build_model("transformer", cfg, TOKEN_INFO, 1)
    b = build_model("transformer", cfg, TOKEN_INFO, 1)
    a.init_member(0, torch.Generator().manual_seed(3), init_scale=1.0)
    b.init_member(0, torch.Generator().manual_seed(3), init_scale=0.5)
    torch.testing.assert_close(b.embed, a.embed * 0.5)
    torch.testing.assert_close(b.qkv_0, a.qkv_0 * 0.5)
    torch.testing.assert_close(b.ln1_0_w, a.ln1_0_w)


def test_embed_std_scales_only_the_embeddings():
    """`embed_std` (the LayerNorm-free transformer's embedding scale) multiplies the token and
    position embeddings' N(0, 1) draws and nothing else."""
    base = TransformerConfig(n_layers=1, d_model=8, n_heads=2, d_ff=16, layernorm=False)
    small = TransformerConfig(**{**base.__dict__, "embed_std": 0.125})
    a = build_model("transformer", base, TOKEN_INFO, 1)
    b = build_model("transformer", small, TOKEN_INFO, 1)
    a.init_member(0, torch.Generator().manual_seed(3))
    b.init_member(0, torch.Generator().manual_seed(3))
    torch.testing.assert_close(b.embed, a.embed * 0.125)
    torch.testing.assert_close(b.pos, a.pos * 0.125)
    torch.testing.assert_close(b.qkv_0, a.qkv_0)
    torch.testing.assert_close(b.unembed, a.unembed)


def test_registry_flags_sequence_models():
    assert MODELS["transformer"].sequence_model
    assert not MODELS["mlp"].sequence_model


# --- shared prefixes -----------------------------------------------------------------------


@pytest.mark.parametrize("n_layers", [1, 2, 3])
@pytest.mark.parametrize("length", [1, 2, 3])
@pytest.mark.parametrize("layernorm", [True, False])
def test_prefixed_forward_is_the_same_function(n_layers, length, layernorm):
    from grokpipe.train.prefix import prefix_plan

    E = 3
    model = transformer(E, n_layers=n_layers, layernorm=layernorm).double()
    g = torch.Generator().manual_seed(1)
    x = torch.randint(0, TOKEN_INFO["vocab_size"], (E, 40, TOKEN_INFO["seq_len"]), generator=g)
    x[1, :, 0] = 5  # one member with a single distinct first token: padded table rows
    plan = prefix_plan(x.numpy(), length)
    plain = model(x)
    prefix = (torch.as_tensor(plan.table), torch.as_tensor(plan.row_prefix))
    shared = model(x[:, :, length:], prefix=prefix)
    torch.testing.assert_close(shared, plain, rtol=1e-12, atol=1e-12)
    with pytest.raises(ValueError, match="last_only"):
        model(x[:, :, length:], last_only=False, prefix=prefix)


def test_prefix_plan_shares_the_operand_prefix_of_binary_operations():
    from grokpipe.train.prefix import plan_prefix

    p = 11
    x, y = np.meshgrid(np.arange(p), np.arange(p), indexing="ij")
    rows = np.stack([x.ravel(), np.full(p * p, p), y.ravel(), np.full(p * p, p + 1)], 1)
    plan = plan_prefix(rows[None], batch=64)
    assert plan.length == 2 and plan.table.shape == (1, p, 2)
    np.testing.assert_array_equal(plan.table[0][plan.row_prefix[0]], rows[:, :2])
    # every prefix distinct (no sharing possible): the plain forward is kept
    assert plan_prefix(np.arange(4 * 30).reshape(1, 30, 4), batch=16) is None


@pytest.mark.parametrize(("vocab", "length"), [(2, 39), (98, 2), (98, 4), (5000, 6)])
def test_distinct_rows_are_numpys_row_unique(vocab, length):
    """The integer-key shortcut gives np.unique(axis=0)'s table and inverse (the last case
    does not fit 62 bits and takes np.unique itself)."""
    from grokpipe.train.prefix import _distinct_rows

    rows = np.random.default_rng(0).integers(0, vocab, (3000, length))
    rows[:500] = rows[500:1000]  # repeated rows
    table, inverse = _distinct_rows(rows)
    want_table, want_inverse = np.unique(rows, axis=0, return_inverse=True)
    np.testing.assert_array_equal(table, want_table)
    np.testing.assert_array_equal(inverse.reshape(-1), want_inverse.reshape(-1))


def test_bf16_multiplies_the_blocks_in_bfloat16_and_keeps_the_logits_float32(monkeypatch):
    """Mixed precision: every block product takes bfloat16 inputs, the unembedding float32
    ones, and the logits come out float32 and close to the float32 model's."""
    from grokpipe.models import base

    model = transformer(2)
    x = tokens(2)
    full = model(x)
    seen = []
    real_bmm = base.bmm

    def recording_bmm(a, w):
        seen.append((a.dtype, w.dtype))
        return real_bmm(a, w)

    monkeypatch.setattr(base, "bmm", recording_bmm)
    monkeypatch.setattr("grokpipe.models.transformer.bmm", recording_bmm)
    model.matmul_dtype = torch.bfloat16
    out = model(x)
    assert out.dtype == torch.float32
    assert seen[-1] == (torch.float32, torch.float32)  # the unembedding
    assert set(seen[:-1]) == {(torch.bfloat16, torch.bfloat16)}
    assert torch.allclose(out, full, atol=0.05)


@pytest.mark.parametrize("prefixed", [False, True])
def test_bfloat16_residual_stream_keeps_logits_float32_and_close(prefixed):
    """The probe's `residual_dtype` (flag b of scripts/gpu_probe.py): every residual state in
    bfloat16, the logits still float32 and near the float32 model's, prefixed or not."""
    from grokpipe.train.prefix import prefix_plan

    model = transformer(2, n_layers=2)
    x = tokens(2)
    kwargs = {}
    if prefixed:
        plan = prefix_plan(x.numpy(), 2)
        x = x[:, :, 2:]
        kwargs["prefix"] = (torch.as_tensor(plan.table), torch.as_tensor(plan.row_prefix))
    full = model(x, **kwargs)
    states = []
    real_stream = model._stream
    model._stream = lambda h: states.append(real_stream(h)) or states[-1]
    model.matmul_dtype = model.residual_dtype = torch.bfloat16
    out = model(x, **kwargs)
    assert states and {h.dtype for h in states} == {torch.bfloat16}
    assert out.dtype == torch.float32
    assert torch.allclose(out, full, atol=0.1)


@pytest.mark.parametrize(
    "dtype, matmul_dtype",
    [
        (torch.float32, None),
        (torch.bfloat16, None),
        (torch.float64, None),
        (torch.float32, torch.bfloat16),  # the embedding under `precision: bf16`
    ],
)
def test_deterministic_gathers_take_the_same_rows_and_gradients(dtype, matmul_dtype):
    """`take` with `deterministic_gathers` returns the indexed rows bit for bit, of an
    embedding table [E, V, d] and of prefix states [E, U, P, d], and its backward adds each
    table row's gradients like the indexed gather's does (to the product's precision)."""
    model = build_model("transformer", TransformerConfig(n_layers=1, d_model=16), TOKEN_INFO, 3)
    model.matmul_dtype = matmul_dtype
    g = torch.Generator().manual_seed(0)
    for table_shape, index_shape in (((3, 13, 16), (3, 5, 4)), ((3, 7, 2, 16), (3, 9))):
        table = torch.randn(table_shape, generator=g).to(dtype)
        index = torch.randint(0, table_shape[1], index_shape, generator=g)
        grad_out = torch.randn(*index_shape, *table_shape[2:], generator=g).to(dtype)
        out, grads = {}, {}
        for deterministic in (False, True):
            model.deterministic_gathers = deterministic
            t = table.clone().requires_grad_(True)
            out[deterministic] = model.take(t, index)
            out[deterministic].backward(grad_out)
            grads[deterministic] = t.grad
        assert out[True].shape == (*index_shape, *table_shape[2:])
        assert out[True].dtype == grads[True].dtype == dtype
        assert torch.equal(out[True], out[False])
        tol = 1e-2 if torch.bfloat16 in (dtype, matmul_dtype) else 1e-5
        assert torch.allclose(grads[True].double(), grads[False].double(), rtol=tol, atol=tol)


def test_deterministic_gathers_of_one_run_repeat_their_gradient_on_a_cpu():
    """A one-run ensemble's indexed gather adds its gradients in a varying order on a CPU with
    two threads (torch 2.13: the prefix keys' gather of a quick early_stop run, which then
    trained to other bits at each rerun); the deterministic gather's gradient repeats bit for
    bit, which is why `engine.deterministic` is on for CPUs too."""
    model = build_model("transformer", TransformerConfig(n_layers=1, d_model=16), TOKEN_INFO, 1)
    model.deterministic_gathers = True
    g = torch.Generator().manual_seed(0)
    table = torch.randn(1, 47, 2, 64, generator=g)
    index = torch.randint(0, 47, (1, 512), generator=g)
    grad_out = torch.randn(1, 512, 2, 64, generator=g)
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        grads = []
        for _ in range(20):
            t = table.clone().requires_grad_(True)
            model.take(t, index).backward(grad_out)
            grads.append(t.grad)
    finally:
        torch.set_num_threads(threads)
    assert all(torch.equal(grads[0], other) for other in grads[1:])


def test_deterministic_gathers_are_products_only_in_the_backward(monkeypatch):
    """Inside the step's gradient (`loss_gradients`) the rows are the indexed gather's and
    their gradient is one one-hot product, read as [E, U, R] (operands with R-row leading
    dimensions); the forward computes no product. Without grad (evaluation) `take` is the
    indexed gather alone, whose forward has no atomic adds."""
    from grokpipe.train.gradients import gradient_anchor, loss_gradients

    model = build_model("transformer", TransformerConfig(n_layers=1, d_model=16), TOKEN_INFO, 3)
    model.deterministic_gathers = True
    table, index = torch.randn(3, 13, 16), torch.randint(0, 13, (3, 5, 4))
    products = []
    bmm = torch.bmm
    monkeypatch.setattr(torch, "bmm", lambda a, b: products.append(a) or bmm(a, b))
    with torch.no_grad():
        rows = model.take(table, index)
    assert products == []

    def square(p):
        return model.take(p["t"], index).square().sum()

    grad = loss_gradients(square, {"t": table}, gradient_anchor("cpu"))["t"]
    assert [(a.shape, a.stride()) for a in products] == [((3, 13, 20), (260, 20, 1))]
    assert torch.equal(rows, table[torch.arange(3).reshape(3, 1, 1), index])
    expected = torch.zeros(3, 13, 16).index_put_(
        (torch.arange(3).reshape(3, 1, 1).expand(3, 5, 4), index), 2 * rows, accumulate=True
    )
    assert torch.allclose(grad, expected, atol=1e-5)


@pytest.mark.parametrize("deterministic", [False, True])
def test_compiled_gradient_of_deterministic_gathers_has_no_scatter(deterministic):
    """What the GPU's compiled step runs: torch.compile of the step's gradient
    (`loss_gradients`, torch.autograd.grad traced into the graph) through the transformer
    with shared prefixes (embedding and prefix key/value gathers). With `deterministic_gathers`
    the graph holds no accumulating `index_put` (an atomic add on a GPU, summing in a changing
    order) and the gradients are those of eager autograd; without, it scatters. Under
    `torch.func.grad`, as the step was until the seventeenth session, compile ignored the
    custom backward and scattered all the same."""
    from functorch.compile import make_boxed_func
    from torch._dynamo.backends.common import aot_autograd

    from grokpipe.train.gradients import (
        allow_compiled_gradients,
        gradient_anchor,
        loss_gradients,
    )
    from grokpipe.train.prefix import prefix_plan

    E = 3
    model = transformer(E, n_layers=2)
    model.matmul_dtype = torch.bfloat16
    model.deterministic_gathers = deterministic
    g = torch.Generator().manual_seed(1)
    x = torch.randint(0, TOKEN_INFO["vocab_size"], (E, 40, TOKEN_INFO["seq_len"]), generator=g)
    plan = prefix_plan(x.numpy(), 2)
    prefix = (torch.as_tensor(plan.table), torch.as_tensor(plan.row_prefix))
    params = {k: v.detach() for k, v in model.named_parameters()}

    def loss(p):
        out = torch.func.functional_call(model, p, (x[:, :, 2:],), {"prefix": prefix})
        return out.square().sum()

    graphs = []

    def keep(gm, _):
        graphs.append(gm.code)
        return make_boxed_func(gm.forward)

    allow_compiled_gradients()
    torch._dynamo.reset()
    anchor = gradient_anchor("cpu")
    step = torch.compile(
        lambda p: loss_gradients(loss, p, anchor),
        backend=aot_autograd(fw_compiler=keep, bw_compiler=keep),
        fullgraph=True,
    )
    compiled = step(params)
    scatters = "".join(graphs).count("index_put")
    assert (scatters == 0) == deterministic, scatters
    eager = loss_gradients(loss, params, anchor)
    for name, grad in eager.items():
        assert torch.equal(compiled[name], grad), name
