"""`d3sr score` (per-image realness and heat maps from a discriminator checkpoint) and
d3sr.viz; `import d3sr` stays free of matplotlib and IPython."""
import csv
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from d3sr import losses, viz
from d3sr.cli import main
from d3sr import Discriminator
from d3sr._discriminator import PATCH
from d3sr.images import read_image
from conftest import DATA

DISC = os.path.join(DATA, "disc_tiny")


@pytest.fixture(scope="module")
def disc():
    return Discriminator.load(DISC)


def test_import_d3sr_imports_no_plotting_or_notebook_package():
    code = ("import sys, d3sr, d3sr.viz, d3sr.images, d3sr.cli, d3sr.losses; "
            "print(sorted(m for m in ('matplotlib', 'IPython', 'ipykernel', 'tqdm') if m in sys.modules))")
    # cwd: the tests' folder, so a checkout's d3sr/ (without its built core) never shadows an installed one
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env=dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path)),
                         cwd=os.path.dirname(os.path.abspath(__file__)))
    assert out.stdout.strip() == "[]", out.stdout


def test_score_prints_writes_csv_and_heatmaps(tmp_path, disc, capsys):
    rng = np.random.default_rng(0)
    (tmp_path / "in").mkdir()
    a = rng.integers(0, 256, (32, 64, 3), dtype=np.uint8)
    b = rng.integers(0, 256, (70, 44, 3), dtype=np.uint8)  # scored on its top-left part of whole patches
    side = disc.vae.downscale * PATCH  # pixels per patch: 8 for this tiny VAE, 32 for SD's
    Image.fromarray(a).save(tmp_path / "in" / "a.png")
    Image.fromarray(b).save(tmp_path / "in" / "b.png")
    assert main(["score", str(tmp_path / "in"), "--discriminator", DISC, "-t", "300", "--seed", "3",
                 "--heatmap", str(tmp_path / "maps"), "--csv", str(tmp_path / "scores.csv")]) == 0
    out = capsys.readouterr().out
    rows = list(csv.reader(open(tmp_path / "scores.csv")))
    assert rows[0] == ["image", "p_real", "logit", "patches"]
    for row, image in zip(rows[1:], (a, b[:70 - 70 % side, :44 - 44 % side])):
        logits = disc.score_images(image, 300, seed=3)
        p = losses.probabilities(logits)[0, 0]
        np.testing.assert_allclose([float(row[1]), float(row[2])], [p.mean(), logits.mean()], atol=2e-6)
        assert row[3] == f"{p.shape[1]}x{p.shape[0]}" and f"{p.mean():.4f}" in out
        name = os.path.splitext(os.path.basename(row[0]))[0]
        heat = read_image(tmp_path / "maps" / f"{name}_realness.png").pixels
        np.testing.assert_array_equal(heat, viz.heatmap_rgb(image, p))
    assert "(mean)" in out and "t = 300" in out


def test_score_names_its_problems(tmp_path, disc, capsys):
    side = disc.vae.downscale * PATCH
    Image.fromarray(np.zeros((side - 1, 40, 3), np.uint8)).save(tmp_path / "small.png")
    assert main(["score", str(tmp_path / "small.png"), "--discriminator", DISC]) == 2
    assert f"smaller than one {side}x{side} patch" in capsys.readouterr().err
    assert main(["score", str(tmp_path / "small.png"), "--discriminator", DISC, "-t", "1000"]) == 2
    assert "-t must be a timestep from 0 to 999" in capsys.readouterr().err


def test_heatmap_rgb_tints_each_patch():
    image = np.full((64, 96, 3), 128, np.uint8)
    p = np.array([[0.0, 0.5, 1.0], [1.0, 0.5, 0.0]], np.float32)
    heat = viz.heatmap_rgb(image, p, opacity=1.0)
    np.testing.assert_array_equal(heat[0, 0], [215, 48, 39])     # fake: red
    np.testing.assert_array_equal(heat[0, 40], [255, 255, 191])  # undecided
    np.testing.assert_array_equal(heat[63, 0], [69, 117, 180])   # real: blue
    assert (heat[:32, :32] == heat[0, 0]).all()
    np.testing.assert_array_equal(viz.heatmap_rgb(image, p, opacity=0.0), image)
    np.testing.assert_array_equal(viz.heatmap_rgb(image, p[None, None]), viz.heatmap_rgb(image, p))
    narrow = viz.heatmap_rgb(image, np.array([[0.45, 0.55]]), opacity=1.0, limits=(0.45, 0.55))
    np.testing.assert_array_equal(narrow[0, [0, 63]], [[215, 48, 39], [69, 117, 180]])
    with pytest.raises(ValueError, match="one per patch"):
        viz.heatmap_rgb(image, np.zeros(3))


def test_grid_boxes_cover_the_image_with_the_overlap():
    boxes = viz.grid_boxes(100, 250, 96, 32)
    assert boxes[0] == (0, 0, 96, 96) and boxes[-1] == (250 - 96, 100 - 96, 96, 96)
    xs = sorted({b[0] for b in boxes})
    assert xs == [0, 64, 128, 154]
    covered = np.zeros((100, 250), bool)
    for x, y, w, h in boxes:
        covered[y: y + h, x: x + w] = True
    assert covered.all()
    assert viz.grid_boxes(50, 60, 96, 32) == [(0, 0, 60, 50)]
    with pytest.raises(ValueError, match="overlap"):
        viz.grid_boxes(100, 100, 32, 32)


def test_figures_draw(tmp_path):
    pytest.importorskip("matplotlib", reason="d3sr.viz figures need matplotlib: pip install 'd3sr[notebook]'")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rng = np.random.default_rng(1)
    lr = rng.integers(0, 256, (16, 24, 3), dtype=np.uint8)
    sr = rng.random((64, 96, 3)).astype(np.float32)
    fig = viz.side_by_side({"input": lr, "d3sr": sr}, crops=[(8, 8, 16, 16), (40, 20, 24, 12)])
    assert len(fig.axes) == 6
    crop = fig.axes[2].images[0].get_array()  # row 2, column 1: the input's first crop on the output's grid
    np.testing.assert_allclose(crop[0, 0], lr[2, 2] / 255, atol=1e-6)
    with pytest.raises(ValueError, match="integer fraction"):
        viz.side_by_side({"a": lr, "b": sr[:60]})
    with pytest.raises(ValueError, match="not inside"):
        viz.side_by_side({"a": sr}, crops=[(90, 0, 16, 16)])
    fig2 = viz.heatmap_overlay(sr, np.full((2, 3), 0.25))
    assert "0.250" in fig2.axes[0].get_title()
    fig3 = viz.tile_grid(sr, viz.grid_boxes(64, 96, 48, 16))
    assert len(fig3.axes[0].patches) == 6
    for i, f in enumerate((fig, fig2, fig3)):
        f.savefig(tmp_path / f"{i}.png")
        plt.close(f)
