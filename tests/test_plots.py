"""micro/plots.py: figure helpers."""


def test_step_ticks_are_short():
    from micro.plots import step_label

    labels = [step_label(x) for x in (0, 2_000, 50_000, 150_000, 1_000_000, 2_500_000, 3e6)]
    assert labels == ["0", "2k", "50k", "150k", "1M", "2.5M", "3M"]


def test_heatmap_cells_never_read_minus_zero_and_colours_span_the_data():
    from micro.plots import _cell_text, _scale

    assert [_cell_text(v) for v in (-0.4, -0.0, 0.4, 56.6, -3.5)] == ["0", "0", "0", "57", "-4"]
    assert _scale([12.0, 57.0, 30.0]) == (12.0, 57.0)  # a best cell of 57 is the top colour
    assert _scale([5.0, 5.0]) == (4.0, 6.0)
