"""Binary-operation tables `a ∘ b = c` (Power et al. 2022; seeds 001 and 002).

One registry entry per operation. Each entry says how to compute the table for a modulus p and
how its values map to tokens; the network only ever sees token ids, never numbers.

Token layout (V = number of values + 2):
    0 .. n_values-1   the values (residues mod p, S5 permutations, or signed integers −p..p)
    n_values          the operation token `∘`
    n_values + 1      the equals token `=`
A row of the table is the 5-token sequence `[a, ∘, b, =, c]`.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

Array = np.ndarray


@dataclass(frozen=True)
class Operation:
    """One binary operation: its operand domain, its value alphabet and its definition."""

    name: str
    kind: str  # "mod" (values 0..p-1), "s5" (120 permutations) or "signed" (integers -p..p)
    fn: Callable[[Array, Array, int], Array]
    nonzero_y: bool = False  # operand y ranges over 1..p-1 (division needs an inverse)
    needs_prime: bool = False
    description: str = ""


OPERATIONS: dict[str, Operation] = {}


def register(op: Operation) -> Operation:
    if op.name in OPERATIONS:
        raise ValueError(f"operation {op.name!r} registered twice")
    OPERATIONS[op.name] = op
    return op


def is_prime(n: int) -> bool:
    if n < 2:
        return False
    return all(n % d for d in range(2, int(n**0.5) + 1))


def mod_inverse(y: Array, p: int) -> Array:
    """y^(p-2) mod p, elementwise (Fermat; p prime, y ≠ 0)."""
    return np.array([pow(int(v), p - 2, p) for v in np.ravel(y)], dtype=np.int64).reshape(
        np.shape(y)
    )


def _mod(name: str, fn, description: str, **kw) -> None:
    register(Operation(name, "mod", lambda x, y, p: fn(x, y, p) % p, description=description, **kw))


_mod("x+y", lambda x, y, p: x + y, "x + y mod p")
_mod("x-y", lambda x, y, p: x - y, "x − y mod p")
_mod("x*y", lambda x, y, p: x * y, "x · y mod p")
_mod(
    "x/y", lambda x, y, p: x * mod_inverse(y, p), "x · y⁻¹ mod p", nonzero_y=True, needs_prime=True
)
_mod(
    "x/y_or_x-y",
    lambda x, y, p: np.where(y % 2 == 1, x * mod_inverse(y, p), x - y),
    "x / y if y odd else x − y, mod p",
    nonzero_y=True,
    needs_prime=True,
)
_mod("x^2+y", lambda x, y, p: x**2 + y, "x² + y mod p")
_mod("x^3+y", lambda x, y, p: x**3 + y, "x³ + y mod p")
_mod("x^2+y^2", lambda x, y, p: x**2 + y**2, "x² + y² mod p")
_mod("x^2+xy+y^2", lambda x, y, p: x**2 + x * y + y**2, "x² + xy + y² mod p")
_mod("x^2+xy+y^2+x", lambda x, y, p: x**2 + x * y + y**2 + x, "x² + xy + y² + x mod p")
_mod("x^3+xy", lambda x, y, p: x**3 + x * y, "x³ + xy mod p")
_mod("x^3+xy^2+y", lambda x, y, p: x**3 + x * y**2 + y, "x³ + xy² + y mod p (hard function)")
_mod(
    "x+y_if_x_even_else_x*y",
    lambda x, y, p: np.where(x % 2 == 0, x + y, x * y),
    "x + y if x even else x · y, mod p",
)
_mod(
    "x+y_if_x_even_else_x-y",
    lambda x, y, p: np.where(x % 2 == 0, x + y, x - y),
    "x + y if x even else x − y, mod p",
)


# --- S5: values are the 120 permutations of (0..4), in lexicographic order. -------------------
S5_PERMS = np.array(list(itertools.permutations(range(5))), dtype=np.int64)  # [120, 5]
_S5_INDEX = {tuple(p): i for i, p in enumerate(S5_PERMS.tolist())}


def s5_compose(a: Array, b: Array) -> Array:
    """Index of the permutation a∘b, (a∘b)(i) = a(b(i)), elementwise over index arrays."""
    pa, pb = S5_PERMS[a], S5_PERMS[b]
    composed = np.take_along_axis(pa, pb, axis=-1)
    return np.array([_S5_INDEX[tuple(r)] for r in composed.reshape(-1, 5).tolist()]).reshape(
        np.shape(a)
    )


def s5_inverse(a: Array) -> Array:
    inv = np.argsort(S5_PERMS[a], axis=-1)
    return np.array([_S5_INDEX[tuple(r)] for r in inv.reshape(-1, 5).tolist()]).reshape(np.shape(a))


register(Operation("s5", "s5", lambda x, y, p: s5_compose(x, y), description="x ∘ y in S5"))
register(
    Operation(
        "s5_conj",
        "s5",
        lambda x, y, p: s5_compose(s5_compose(x, y), s5_inverse(x)),
        description="x ∘ y ∘ x⁻¹ in S5",
    )
)
register(
    Operation(
        "s5_aba",
        "s5",
        lambda x, y, p: s5_compose(s5_compose(x, y), x),
        description="x ∘ y ∘ x in S5",
    )
)


# --- Signed integers (seed 002): operands 1..p, results truncated remainder by p. ------------
def _signed(name: str, fn, description: str) -> None:
    register(
        Operation(name, "signed", lambda x, y, p: np.fmod(fn(x, y), p), description=description)
    )


_signed("int_x+y", lambda x, y: x + y, "rem(x + y, p) over integers 1..p")
_signed("int_x-y", lambda x, y: x - y, "rem(x − y, p) over integers 1..p (may be negative)")
_signed(
    "int_odd_div_even_sub",
    lambda x, y: np.where(y % 2 == 1, x // y, x - y),
    "rem(x ÷ y if y odd else x − y, p) over integers 1..p (the asymmetric function)",
)


@dataclass(frozen=True)
class OperationTable:
    """The full table of one operation: operands, results and their token encoding."""

    op: str
    p: int
    x: Array  # operand values [N]
    y: Array
    c: Array  # result values [N]
    tokens: Array  # [N, 5] = a, ∘, b, =, c as token ids
    n_values: int

    @property
    def vocab_size(self) -> int:
        return self.n_values + 2


def value_range(kind: str, p: int) -> tuple[int, int]:
    """(lowest value, number of values) of an operation kind's alphabet."""
    return {"mod": (0, p), "s5": (0, len(S5_PERMS)), "signed": (-p, 2 * p + 1)}[kind]


def operand_values(op: Operation, p: int) -> tuple[Array, Array]:
    if op.kind == "s5":
        xs = ys = np.arange(len(S5_PERMS))
    elif op.kind == "signed":
        xs = ys = np.arange(1, p + 1)
    else:
        xs = np.arange(p)
        ys = np.arange(1, p) if op.nonzero_y else np.arange(p)
    return xs, ys


def check_operation(name: str, p: int) -> str | None:
    """Why (op, p) is invalid, or None when it is fine."""
    if name not in OPERATIONS:
        return f"unknown operation {name!r} (known: {', '.join(OPERATIONS)})"
    if p < 2:
        return f"modulus must be at least 2, got {p}"
    if OPERATIONS[name].needs_prime and not is_prime(p):
        return f"operation {name!r} divides, so the modulus must be prime; {p} is not"
    return None


def build_table(name: str, p: int) -> OperationTable:
    """Every equation of operation `name` modulo `p`, in row-major operand order."""
    problem = check_operation(name, p)
    if problem:
        raise ValueError(problem)
    op = OPERATIONS[name]
    xs, ys = operand_values(op, p)
    x, y = (a.ravel() for a in np.meshgrid(xs, ys, indexing="ij"))
    c = np.asarray(op.fn(x.astype(np.int64), y.astype(np.int64), p), dtype=np.int64)
    low, n_values = value_range(op.kind, p)
    for arr, what in ((x, "operand"), (y, "operand"), (c, "result")):
        if arr.min() < low or arr.max() >= low + n_values:
            raise AssertionError(f"{name} mod {p}: {what} outside the alphabet")
    op_tok, eq_tok = n_values, n_values + 1
    tokens = np.stack(
        [x - low, np.full_like(x, op_tok), y - low, np.full_like(x, eq_tok), c - low], axis=1
    )
    return OperationTable(name, p, x, y, c, tokens.astype(np.int64), n_values)
