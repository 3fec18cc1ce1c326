"""Checks that provoke IOMMU faults are spread among the others, per host, each group in its
own order; nothing is lost or duplicated."""

from __future__ import annotations

from vfio_hil_pytest.schedule import spread, spread_per_host


def _faulting(name: str) -> bool:
    return name.startswith("F")


def test_spread_places_each_faulting_item_in_its_share_of_the_run() -> None:
    items = ["a", "b", "c", "d", "e", "f", "g", "h", "F1", "F2", "F3"]

    assert spread(items, _faulting) == ["a", "F1", "b", "c", "d", "F2", "e", "f", "g", "F3", "h"]


def test_spread_without_both_kinds_keeps_the_order() -> None:
    assert spread(["F1", "F2"], _faulting) == ["F1", "F2"]
    assert spread(["a", "b"], _faulting) == ["a", "b"]


def test_spread_per_host_keeps_every_position_on_its_host() -> None:
    items = ["a1", "b1", "a2", "Fa1", "b2", "Fb1", "a3", "Fa2"]

    def host(name: str) -> str:
        return name[-2] if _faulting(name) else name[0]

    ordered = spread_per_host(items, _faulting, host)

    assert sorted(ordered) == sorted(items)
    assert [host(i) for i in ordered] == [host(i) for i in items]
    assert [i for i in ordered if host(i) == "a"] == ["a1", "Fa1", "a2", "Fa2", "a3"]
    assert [i for i in ordered if host(i) == "b"] == ["b1", "Fb1", "b2"]
