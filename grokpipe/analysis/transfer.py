"""Seed 002's transfer comparison in one line: what the fine-tuned runs started from (did
their source runs grok, how much of the new task the source task's answers already get right)
and how the fine-tuned and from-scratch arms ended."""

from __future__ import annotations

from grokpipe.analysis.parity import fmt_steps


def transfer_verdict(facts: dict, metrics: dict) -> str:
    """One line: what the fine-tuned runs started from, and how the two arms ended."""
    conds = metrics["conditions"]
    scratch = next((c for k, c in conds.items() if k.endswith("=scratch")), None)
    tuned = [c for k, c in conds.items() if not k.endswith("=scratch")]
    grokked = sum(f["source_grokked_at"] is not None for f in facts.values())
    heads = [f["head_start_val_acc"] for f in facts.values() if f["head_start_val_acc"] is not None]
    parts = [f"{grokked}/{len(facts)} source runs grokked"]
    if heads:
        lo, hi = f"{min(heads):.2f}", f"{max(heads):.2f}"
        parts.append(
            f"the source task's answers are right on {lo if lo == hi else f'{lo}-{hi}'} of "
            "the validation rows before fine-tuning"
        )

    def arm(name: str, c: dict) -> str:
        mem = c["memorized_at"]["mean"]
        memorised = "never memorised" if mem is None else f"memorised at {fmt_steps(mem)}"
        return (
            f"{name}: {c['grokked_seeds']}/{c['seeds']} grok, {memorised}, "
            f"final val {c['final_val_acc']['mean']:.3f}"
        )

    arms = [arm("fine-tuned", c) for c in tuned] + ([arm("scratch", scratch)] if scratch else [])
    return "; ".join(parts + arms)
