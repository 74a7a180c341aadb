"""The notebook progress bar: a tqdm bar on stdout following the logged steps."""

import re

from geossl.train import metrics


def test_progress_bar_follows_logged_steps(tmp_path, capsys):
    writer = metrics.MetricsWriter(str(tmp_path), total_steps=6, progress_bar=True)
    for step in (2, 4, 6):
        row = {"step": step, "loss": 1.0 / step, "images_per_s": 10.0 * step}
        writer.write([row])
        writer.log(row, elapsed_s=step, steps_done=step)
    writer.close()
    out = capsys.readouterr().out
    assert re.search(r"training: 100%.*6/6.*loss=0\.1667, img/s=60\.0", out), out


def test_no_bar_outside_a_notebook(tmp_path, capsys):
    assert not metrics.in_notebook()
    writer = metrics.MetricsWriter(str(tmp_path), total_steps=2)
    row = {"step": 2, "loss": 1.0}
    writer.log(row, elapsed_s=1.0, steps_done=2)
    writer.close()
    assert "training" not in capsys.readouterr().out
