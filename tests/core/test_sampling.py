from __future__ import annotations

from mira_dagster.core.sampling import sample_size, teacher_sample

IDS = [f"r{i:03d}" for i in range(100)]


def test_sample_size() -> None:
    assert sample_size(100, 0.5, 20) == 50
    assert sample_size(10, 0.5, 20) == 10
    assert sample_size(30, 0.1, 20) == 20


def test_split_sizes_and_disjoint() -> None:
    split = teacher_sample(IDS, fraction=0.5, minimum=20, heldout_fraction=0.4, seed=0)
    assert len(split) == 50
    heldout = {r for r, s in split.items() if s == "heldout"}
    distill = {r for r, s in split.items() if s == "distill"}
    assert len(heldout) == 20 and len(distill) == 30 and not heldout & distill


def test_stable_and_seeded() -> None:
    a = teacher_sample(IDS, fraction=0.5, minimum=0, heldout_fraction=0.4, seed=0)
    assert a == teacher_sample(list(reversed(IDS)), fraction=0.5, minimum=0, heldout_fraction=0.4, seed=0)
    assert a != teacher_sample(IDS, fraction=0.5, minimum=0, heldout_fraction=0.4, seed=1)


def test_teacher_sample_max_caps_the_sample_and_keeps_its_smallest_hashes() -> None:
    assert sample_size(100, 0.5, 20, maximum=30) == 30
    assert sample_size(100, 0.5, 20, maximum=10) == 10  # the cap (a cost limit) wins over the minimum
    full = teacher_sample(IDS, fraction=0.5, minimum=0, heldout_fraction=0.4, seed=0)
    capped = teacher_sample(IDS, fraction=0.5, minimum=0, heldout_fraction=0.4, seed=0, maximum=12)
    assert len(capped) == 12 and set(capped) < set(full)  # raising the cap later keeps what was labelled
    assert sum(s == "heldout" for s in capped.values()) == 5
