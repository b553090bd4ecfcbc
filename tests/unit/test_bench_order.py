"""The benchmark's round order: squidmesh and its baseline always run back to back."""

from __future__ import annotations

from benchmarks.bench_ops import Variant, _round_order


def _variants(extras: int) -> list[Variant]:
    def make(env: object) -> object:
        raise AssertionError("not called")

    names = [("base", "baseline"), ("squid", "squidmesh")]
    names += [(f"extra{i}", "extra") for i in range(extras)]
    return [Variant(name, role, make) for name, role in names]  # type: ignore[arg-type]


def test_the_pair_is_adjacent_and_alternates_and_every_variant_runs_once() -> None:
    variants = _variants(4)
    firsts = set()
    for r in range(12):
        order = [v.name for v in _round_order(variants, r)]
        assert sorted(order) == sorted(v.name for v in variants)
        i, j = order.index("base"), order.index("squid")
        assert abs(i - j) == 1
        assert (i < j) == (r % 2 == 0)
        firsts.add(order[0])
    # The pair and each extra take the first slot in turn.
    assert firsts == {"base", "squid", "extra0", "extra1", "extra2", "extra3"}


def test_a_bench_of_two_variants_alternates() -> None:
    variants = _variants(0)
    assert [v.name for v in _round_order(variants, 0)] == ["base", "squid"]
    assert [v.name for v in _round_order(variants, 1)] == ["squid", "base"]
