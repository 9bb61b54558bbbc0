"""The d3sr command line: eval pairs by name, scores, prints means, writes a CSV."""
import csv
import os

import numpy as np
import pytest
from PIL import Image

import d3sr.metrics as metrics
from d3sr import cli
from d3sr.testing import metric_pair
from test_metrics import weights_file, ref  # noqa: F401  (fixtures)


def write_images(folder, names, images):
    os.makedirs(folder, exist_ok=True)
    for name, image in zip(names, images):
        Image.fromarray(image).save(os.path.join(folder, name))


@pytest.fixture
def folders(tmp_path):
    sr, hr = metric_pair((3, 40, 36), 20)
    names = ["b.png", "a.png", "c.png"]  # listed out of order on purpose
    write_images(tmp_path / "sr", [n.replace(".png", "_x4.png") for n in names], sr)
    write_images(tmp_path / "hr", names, hr)
    return tmp_path, sr, hr, names


def test_eval_scores_pairs_by_name(folders, weights_file, capsys):  # noqa: F811
    tmp, sr, hr, names = folders
    out_csv = tmp / "scores.csv"
    rc = cli.main(["eval", "--sr", str(tmp / "sr"), "--hr", str(tmp / "hr"), "--sr-suffix", "_x4",
                   "--metrics", "psnr,ssim,lpips,dists,ea_dists", "--crop-border", "2", "--weights", weights_file,
                   "--csv", str(out_csv)])
    assert rc == 0
    captured = capsys.readouterr()
    assert "3 image pairs; PSNR/SSIM on Y (BT.601 YCbCr), crop 2" in captured.out
    assert "3/3" in captured.err  # the progress bar
    rows = list(csv.reader(open(out_csv)))
    assert rows[0] == ["image", "psnr", "ssim", "lpips", "dists", "ea_dists"]
    assert [r[0] for r in rows[1:]] == ["a", "b", "c"]
    for row in rows[1:]:
        i = names.index(row[0] + ".png")
        expected = [metrics.psnr(sr[i], hr[i], crop_border=2), metrics.ssim(sr[i], hr[i], crop_border=2),
                    metrics.lpips(sr[i], hr[i], weights=weights_file), metrics.dists(sr[i], hr[i], weights=weights_file),
                    metrics.ea_dists(sr[i], hr[i], weights=weights_file)]
        np.testing.assert_allclose([float(v) for v in row[1:]], expected, atol=1e-6)
    means = [float(v) for v in captured.out.strip().splitlines()[2].split()]
    np.testing.assert_allclose(means, np.mean([[float(v) for v in r[1:]] for r in rows[1:]], 0), atol=1e-4)


def test_eval_names_a_missing_partner(folders, capsys):
    tmp, _, hr, _ = folders
    write_images(tmp / "hr", ["d.png"], hr[:1])
    os.remove(tmp / "sr" / "a_x4.png")
    rc = cli.main(["eval", "--sr", str(tmp / "sr"), "--hr", str(tmp / "hr"), "--sr-suffix", "_x4", "--metrics", "psnr"])
    assert rc == 2
    err = capsys.readouterr().err
    assert "a.png in" in err and "d.png in" in err and "never by order" in err


def test_eval_rejects_size_mismatch_and_unknown_metrics(folders, capsys):
    tmp, sr, _, _ = folders
    Image.fromarray(sr[0][:30]).save(tmp / "sr" / "b_x4.png")
    base = ["eval", "--sr", str(tmp / "sr"), "--hr", str(tmp / "hr"), "--sr-suffix", "_x4"]
    assert cli.main(base + ["--metrics", "psnr"]) == 2
    assert "b: SR b_x4.png is 36x30, HR b.png is 36x40" in capsys.readouterr().err
    assert cli.main(base + ["--metrics", "psnr,niqe"]) == 2
    assert "unknown ['niqe']" in capsys.readouterr().err


def test_eval_without_weights_fails_before_scoring(folders, tmp_path, capsys):
    tmp, _, _, _ = folders
    rc = cli.main(["eval", "--sr", str(tmp / "sr"), "--hr", str(tmp / "hr"), "--sr-suffix", "_x4",
                   "--weights", str(tmp_path / "none.safetensors")])
    assert rc == 2
    err = capsys.readouterr().err
    assert "d3sr convert-metric-weights" in err and "[" not in err.splitlines()[0]  # no progress bar yet
