"""micro/plots.py: figure helpers."""


def test_step_ticks_are_short():
    from micro.plots import step_label

    labels = [step_label(x) for x in (0, 2_000, 50_000, 150_000, 1_000_000, 2_500_000, 3e6)]
    assert labels == ["0", "2k", "50k", "150k", "1M", "2.5M", "3M"]
