"""Operation tables against brute-force definitions written here with plain Python ints."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

from grokpipe.config.schema import ConfigError, from_dict
from grokpipe.tasks.arithmetic import OPERATIONS, build_table, check_operation
from grokpipe.tasks.arithmetic_task import ArithmeticData, ArithmeticTask, symmetry_score

PRIMES = (7, 11)


# --- independent reference definitions ------------------------------------------------------


def inv(y: int, p: int) -> int:
    return pow(y, -1, p)


MOD_REFERENCE = {
    "x+y": lambda x, y, p: (x + y) % p,
    "x-y": lambda x, y, p: (x - y) % p,
    "x*y": lambda x, y, p: (x * y) % p,
    "x/y": lambda x, y, p: (x * inv(y, p)) % p,
    "x/y_or_x-y": lambda x, y, p: (x * inv(y, p)) % p if y % 2 == 1 else (x - y) % p,
    "x^2+y": lambda x, y, p: (x * x + y) % p,
    "x^3+y": lambda x, y, p: (x * x * x + y) % p,
    "x^2+y^2": lambda x, y, p: (x * x + y * y) % p,
    "x^2+xy+y^2": lambda x, y, p: (x * x + x * y + y * y) % p,
    "x^2+xy+y^2+x": lambda x, y, p: (x * x + x * y + y * y + x) % p,
    "x^3+xy": lambda x, y, p: (x**3 + x * y) % p,
    "x^3+xy^2+y": lambda x, y, p: (x**3 + x * y**2 + y) % p,
    "x+y_if_x_even_else_x*y": lambda x, y, p: (x + y) % p if x % 2 == 0 else (x * y) % p,
    "x+y_if_x_even_else_x-y": lambda x, y, p: (x + y) % p if x % 2 == 0 else (x - y) % p,
}
DIVISION_OPS = {"x/y", "x/y_or_x-y"}


def trunc_rem(v: int, p: int) -> int:
    """Truncated remainder (sign of the dividend), as C / math.fmod."""
    return int(math.fmod(v, p))


SIGNED_REFERENCE = {
    "int_x+y": lambda x, y, p: trunc_rem(x + y, p),
    "int_x-y": lambda x, y, p: trunc_rem(x - y, p),
    "int_odd_div_even_sub": lambda x, y, p: trunc_rem(x // y if y % 2 == 1 else x - y, p),
}

PERMS = list(itertools.permutations(range(5)))
PERM_INDEX = {perm: i for i, perm in enumerate(PERMS)}


def compose(a: tuple, b: tuple) -> tuple:
    """(a∘b)(i) = a(b(i))."""
    return tuple(a[b[i]] for i in range(5))


def perm_inverse(a: tuple) -> tuple:
    out = [0] * 5
    for i, ai in enumerate(a):
        out[ai] = i
    return tuple(out)


S5_REFERENCE = {
    "s5": lambda a, b: compose(a, b),
    "s5_conj": lambda a, b: compose(compose(a, b), perm_inverse(a)),
    "s5_aba": lambda a, b: compose(compose(a, b), a),
}


def reference_rows(name: str, p: int) -> list[tuple[int, int, int]]:
    """Every (x, y, c) of the operation, row-major in (x, y), from the definitions above."""
    if name in S5_REFERENCE:
        fn = S5_REFERENCE[name]
        return [
            (i, j, PERM_INDEX[fn(PERMS[i], PERMS[j])])
            for i in range(len(PERMS))
            for j in range(len(PERMS))
        ]
    if name in SIGNED_REFERENCE:
        fn = SIGNED_REFERENCE[name]
        return [(x, y, fn(x, y, p)) for x in range(1, p + 1) for y in range(1, p + 1)]
    fn = MOD_REFERENCE[name]
    ys = range(1, p) if name in DIVISION_OPS else range(p)
    return [(x, y, fn(x, y, p)) for x in range(p) for y in ys]


# --- the registry --------------------------------------------------------------------------


def test_registry_covers_every_reference_operation():
    expected = set(MOD_REFERENCE) | set(SIGNED_REFERENCE) | set(S5_REFERENCE)
    assert expected <= set(OPERATIONS)
    # and every registered operation is checked by one of the references
    assert set(OPERATIONS) <= expected


@pytest.mark.parametrize("p", PRIMES)
@pytest.mark.parametrize("name", sorted(set(MOD_REFERENCE) | set(SIGNED_REFERENCE)))
def test_numeric_operation_matches_brute_force(name, p):
    table = build_table(name, p)
    got = list(zip(table.x.tolist(), table.y.tolist(), table.c.tolist()))
    assert got == reference_rows(name, p)


@pytest.mark.parametrize("name", ["x+y", "x/y"])
def test_p97_matches_brute_force(name):
    table = build_table(name, 97)
    got = list(zip(table.x.tolist(), table.y.tolist(), table.c.tolist()))
    assert got == reference_rows(name, 97)


@pytest.mark.parametrize("name", sorted(S5_REFERENCE))
def test_s5_operation_matches_brute_force(name):
    table = build_table(name, 97)  # p is ignored by S5
    got = list(zip(table.x.tolist(), table.y.tolist(), table.c.tolist()))
    assert got == reference_rows(name, 97)


def test_s5_composition_convention_is_a_of_b():
    """(a∘b)(i) = a(b(i)): pick two non-commuting permutations and check the order."""
    a = PERM_INDEX[(1, 0, 2, 3, 4)]  # swap 0,1
    b = PERM_INDEX[(0, 2, 1, 3, 4)]  # swap 1,2
    table = build_table("s5", 97)
    c = int(table.c[a * 120 + b])
    # a(b(0)) = a(0) = 1; a(b(1)) = a(2) = 2; a(b(2)) = a(1) = 0
    assert PERMS[c] == (1, 2, 0, 3, 4)


# --- domain sizes and token encoding ---------------------------------------------------------


@pytest.mark.parametrize("p", PRIMES)
@pytest.mark.parametrize("name", sorted(OPERATIONS))
def test_domain_size(name, p):
    table = build_table(name, p)
    if name in S5_REFERENCE:
        n = 120 * 120
    elif name in DIVISION_OPS:
        n = p * (p - 1)
    else:
        n = p * p
    assert len(table.x) == len(table.y) == len(table.c) == n
    assert table.tokens.shape == (n, 5)
    # every operand pair appears exactly once
    assert len(set(zip(table.x.tolist(), table.y.tolist()))) == n


@pytest.mark.parametrize("p", PRIMES)
@pytest.mark.parametrize("name", sorted(OPERATIONS))
def test_token_encoding(name, p):
    table = build_table(name, p)
    if name in S5_REFERENCE:
        n_values, low = 120, 0
    elif name in SIGNED_REFERENCE:
        n_values, low = 2 * p + 1, -p  # integers -p..p
    else:
        n_values, low = p, 0
    assert table.n_values == n_values
    assert table.vocab_size == n_values + 2
    tok = table.tokens
    assert tok.dtype == np.int64
    np.testing.assert_array_equal(tok[:, 0], table.x - low)
    np.testing.assert_array_equal(tok[:, 1], np.full(len(tok), n_values))  # ∘
    np.testing.assert_array_equal(tok[:, 2], table.y - low)
    np.testing.assert_array_equal(tok[:, 3], np.full(len(tok), n_values + 1))  # =
    np.testing.assert_array_equal(tok[:, 4], table.c - low)
    # value tokens never collide with the two symbol tokens
    values = tok[:, [0, 2, 4]]
    assert values.min() >= 0 and values.max() < n_values


def test_signed_results_can_be_negative_and_encode_with_offset():
    p = 7
    table = build_table("int_x-y", p)
    row = int(np.flatnonzero((table.x == 1) & (table.y == 7))[0])
    assert table.c[row] == -6  # trunc rem(1 - 7, 7) = -6, not 1
    assert table.tokens[row, 4] == -6 + p
    row = int(np.flatnonzero((table.x == 7) & (table.y == 7))[0])
    assert table.c[row] == 0
    table = build_table("int_x+y", p)
    row = int(np.flatnonzero((table.x == 7) & (table.y == 7))[0])
    assert table.c[row] == 0  # 14 rem 7


def test_task_build_exposes_tokens_and_sizes():
    task = ArithmeticTask()
    cfg = ArithmeticData(op="x-y", p=11)
    data = task.build(cfg, seed=0)
    table = build_table("x-y", 11)
    np.testing.assert_array_equal(data.inputs, table.tokens[:, :4])
    np.testing.assert_array_equal(data.targets, table.tokens[:, 4])
    np.testing.assert_array_equal(data.seq_targets, table.tokens[:, 1:])
    assert data.info["vocab_size"] == 13
    assert data.info["n_classes"] == 13
    assert data.info["seq_len"] == 4
    assert len(data) == 121


# --- seed 004's offset encoding [x, y + d, =] -----------------------------------------------


@pytest.mark.parametrize("d", [0, 3, None])
@pytest.mark.parametrize("name", ["x+y", "x/y", "int_x-y", "s5"])
def test_offset_encoding_shifts_the_second_operand(name, d):
    """Three tokens: x's value token, y's shifted by d (None: by the alphabet's size, so each
    operand has tokens of its own), then `=` after every operand token; the answer is read
    among the alphabet's values alone, and there are no next-token targets."""
    p = 7
    table = build_table(name, p)
    n = table.n_values
    shift = n if d is None else d
    cfg = ArithmeticData(op=name, p=p, encoding="offset", operand_offset=d)
    cfg.validate("data")
    data = ArithmeticTask().build(cfg, seed=0)
    np.testing.assert_array_equal(data.inputs[:, 0], table.tokens[:, 0])
    np.testing.assert_array_equal(data.inputs[:, 1], table.tokens[:, 2] + shift)
    eq = max(n, n + shift)
    np.testing.assert_array_equal(data.inputs[:, 2], np.full(len(table.x), eq))
    np.testing.assert_array_equal(data.targets, table.tokens[:, 4])
    assert data.seq_targets is None and not cfg.has_sequence_targets
    assert data.info == {**data.info, "vocab_size": eq + 1, "seq_len": 3, "n_classes": n}
    assert data.targets.max() < n and data.inputs.max() == eq
    if name == "s5":
        assert "med_ranges" not in data.info  # permutations have no order to walk along
    else:
        (x0, x1), (y0, y1) = data.info["med_ranges"]
        # each range covers exactly the tokens its operand takes
        assert (x0, x1) == (data.inputs[:, 0].min(), data.inputs[:, 0].max() + 1)
        assert (y0, y1) == (data.inputs[:, 1].min(), data.inputs[:, 1].max() + 1)
    assert ArithmeticTask().dataset_key(cfg, 0) == f"{name}_p{p}_offset{shift}"


def test_equation_and_offset_datasets_have_distinct_keys():
    task = ArithmeticTask()
    keys = {
        task.dataset_key(ArithmeticData(op="x+y", p=7), 0),
        task.dataset_key(ArithmeticData(op="x+y", p=7, encoding="offset", operand_offset=0), 0),
        task.dataset_key(ArithmeticData(op="x+y", p=7, encoding="offset"), 0),
    }
    assert len(keys) == 3


@pytest.mark.parametrize(
    ("encoding", "d", "reason"),
    [
        ("equation", 0, "only the 'offset' encoding"),
        ("offset", -1, "non-negative integer"),
        ("offset", 1.5, "non-negative integer"),
        ("offset", True, "non-negative integer"),
    ],
)
def test_operand_offset_is_checked(encoding, d, reason):
    cfg = ArithmeticData(op="x+y", p=7, encoding=encoding, operand_offset=d)
    with pytest.raises(ConfigError) as info:
        cfg.validate("data")
    assert info.value.key == "data.operand_offset" and reason in info.value.reason


# --- invalid moduli ------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(DIVISION_OPS))
@pytest.mark.parametrize("p", [4, 9, 15])
def test_division_by_non_prime_is_refused(name, p):
    with pytest.raises(ValueError) as info:
        build_table(name, p)
    msg = str(info.value)
    assert "prime" in msg and str(p) in msg and name in msg
    assert check_operation(name, p) == msg


def test_division_by_non_prime_in_config_names_the_key():
    with pytest.raises(ConfigError) as info:
        from_dict(ArithmeticData, {"op": "x/y", "p": 12}, "experiments.e.data")
    assert info.value.key == "experiments.e.data.p"
    assert "prime" in str(info.value)


def test_non_division_op_accepts_composite_modulus():
    table = build_table("x+y", 10)
    assert len(table.c) == 100
    assert check_operation("x*y", 12) is None
    assert table.c.max() == 9


def test_unknown_operation_is_refused():
    with pytest.raises(ValueError, match="unknown operation"):
        build_table("x%y", 7)


# --- symmetry score ------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["x+y", "x*y", "x^2+y^2", "x^2+xy+y^2", "int_x+y"])
def test_symmetry_score_of_commutative_op_is_one(name):
    data = ArithmeticTask().build(ArithmeticData(op=name, p=7), seed=0)
    assert symmetry_score(data) == 1.0


def test_symmetry_score_of_subtraction():
    """x − y = y − x mod p (p odd prime) only on the diagonal: score 1/p."""
    p = 7
    data = ArithmeticTask().build(ArithmeticData(op="x-y", p=p), seed=0)
    assert symmetry_score(data) == pytest.approx(1 / p)


def test_symmetry_score_of_s5_matches_brute_force():
    data = ArithmeticTask().build(ArithmeticData(op="s5", p=7), seed=0)
    commuting = sum(compose(a, b) == compose(b, a) for a in PERMS for b in PERMS)
    assert symmetry_score(data) == pytest.approx(commuting / len(PERMS) ** 2)
    assert 0 < symmetry_score(data) < 1
