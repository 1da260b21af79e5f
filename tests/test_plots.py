"""The training-curve plot: per-trajectory means and the PNG itself."""

from PIL import Image

from receler.plots import plot_train_log, trajectory_means


def test_trajectory_means_split_where_the_timestep_goes_up():
    # Two trajectories of three steps (timesteps 900, 500, 100), the second with one non-finite loss skipped.
    losses = [9.0, 5.0, 1.0, 6.0, float("nan"), 2.0]
    records = [{"step": i + 1, "timestep": t, "loss": v} for i, (t, v) in enumerate(zip([900, 500, 100] * 2, losses))]
    assert trajectory_means(records, "loss") == [(3, 5.0), (6, 4.0)]
    assert trajectory_means([{"step": 1, "loss": 1.0}], "loss") == []  # no timesteps logged: no means


def test_plot_writes_a_png(tmp_path):
    records = [{"step": i + 1, "timestep": 900 - 100 * (i % 9), "loss": 10.0 / (1 + i % 9), "lr": 1e-3,
                "grad_norm": 1.0} for i in range(27)]
    path = plot_train_log(records, tmp_path / "loss.png")
    with Image.open(path) as image:
        assert image.format == "PNG" and image.size[0] > 100
    assert plot_train_log([{"step": 1}], tmp_path / "none.png") is None
