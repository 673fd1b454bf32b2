"""A run's preprocessing: pixel tables, train-split statistics, what the samplers feed the model,
what the run directory records, and cross-domain evaluation with the run's preprocessing."""
from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from l2l_app.cli import cli
from l2l_app.data import Preprocessing, build_task_source, load_split
from l2l_app.data.preprocess import channel_stats
from l2l_app.registry import DATASETS
from conftest import make_tiny_split

pytestmark = pytest.mark.usefixtures("one_thread")

RUN_ARGS = ["--hidden", "8", "--ways", "3", "--shots", "1", "--queries", "2", "--iterations", "2",
            "--val-every", "2", "--val-episodes", "2", "--device", "cpu", "--quiet"]


def run_cli(*args):
    result = CliRunner().invoke(cli, [str(a) for a in args])
    return result.exit_code, result.stdout, result.stderr


def normalised(split, dataset="tiny") -> Preprocessing:
    mean, std = channel_stats(split)
    return Preprocessing(dataset, "image", split.images.shape[1], split.images.shape[-1], "stretch", mean, std)


# ------------------------------------------------------------------------------ the arithmetic
def test_unnormalised_inputs_are_exactly_the_historical_pixels_over_255():
    pre = Preprocessing("tiny", "image", 3, 8, "stretch")
    x = torch.arange(256, dtype=torch.uint8).reshape(1, 4, 8, 8).expand(3, 4, 8, 8)[:, :3].contiguous()
    assert torch.equal(pre.to_input(x), x.float() / 255.0)


def test_channel_stats_equal_a_float64_reference():
    split = make_tiny_split(num_classes=4, per_class=5, channels=3, size=6, seed=3)
    mean, std = channel_stats(split, chunk=7)  # chunks that do not divide N
    pixels = split.images.double().numpy() / 255.0
    ref_mean = pixels.mean(axis=(0, 2, 3))
    ref_std = pixels.std(axis=(0, 2, 3))
    # written with 12 significant digits: relative error below 1e-11
    np.testing.assert_allclose(mean, ref_mean, rtol=1e-11)
    np.testing.assert_allclose(std, ref_std, rtol=1e-11)


def test_normalised_inputs_match_the_float64_formula_to_float32_rounding():
    split = make_tiny_split(num_classes=3, per_class=4, channels=3, size=5, seed=1)
    pre = normalised(split)
    x = split.images[:6]
    got = pre.to_input(x).double()
    mean = torch.tensor(pre.mean, dtype=torch.float64).view(1, 3, 1, 1)
    std = torch.tensor(pre.std, dtype=torch.float64).view(1, 3, 1, 1)
    want = (x.double() / 255.0 - mean) / std
    # one float32 rounding of values of magnitude <= |(0 or 1) - mean| / std
    bound = want.abs().max().item() * 2.0 ** -24 * 1.01
    assert (got - want).abs().max().item() <= bound
    # the normalised train split has zero mean and unit std per channel (population statistics)
    all_inputs = pre.to_input(split.images).double()
    assert all_inputs.mean(dim=(0, 2, 3)).abs().max().item() < 1e-6
    assert (all_inputs.std(dim=(0, 2, 3), unbiased=False) - 1).abs().max().item() < 1e-6


def test_feature_vectors_are_standardised_per_feature():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(20, 4, generator=g) * torch.tensor([1.0, 10.0, 0.1, 3.0]) + 5
    split_like = type("S", (), {"images": x})
    mean, std = channel_stats(split_like)
    pre = Preprocessing("features", "vectors", 4, 0, "stretch", mean, std)
    out = pre.to_input(x).double()
    assert out.mean(0).abs().max().item() < 1e-5 and (out.std(0, unbiased=False) - 1).abs().max().item() < 1e-5
    assert pre.input_shape == (4,)


def test_constant_channel_gets_std_one_not_a_division_by_zero():
    split = make_tiny_split(num_classes=2, per_class=3, channels=1, size=4)
    split.images.fill_(7)
    mean, std = channel_stats(split)
    assert std == (1.0,) and abs(mean[0] - 7 / 255) < 1e-12


def test_round_trip_through_json():
    split = make_tiny_split(num_classes=3, per_class=4, channels=3, size=5, seed=2)
    pre = normalised(split)
    again = Preprocessing.from_dict(json.loads(json.dumps(pre.to_dict())))
    assert again == pre


@pytest.mark.parametrize("kind", ["l2l", "tensor"])
def test_both_samplers_feed_the_model_the_preprocessed_pixels(kind):
    split = make_tiny_split(num_classes=6, per_class=5, channels=3, size=6, seed=4)
    pre = normalised(split)
    source = build_task_source(kind, split, 3, 2, 1, seed=5, preprocessing=pre)
    batch, support_idx, query_idx = source.sample_with_indices(4)
    assert torch.equal(batch.support_x, pre.to_input(split.images[support_idx]))
    assert torch.equal(batch.query_x, pre.to_input(split.images[query_idx]))
    plain = build_task_source(kind, split, 3, 2, 1, seed=5)
    assert torch.equal(plain.sample(4).support_x, split.images[support_idx].float() / 255.0)


# ------------------------------------------------------------------------------ new images
def test_a_new_image_is_prepared_like_the_training_images():
    pre = Preprocessing.unnormalised(DATASETS["omniglot"])
    strokes = np.full((28, 28), 255, dtype=np.uint8)
    strokes[10:18, 5:20] = 0  # black strokes on white paper, as the files are
    buf = io.BytesIO()
    Image.fromarray(strokes, "L").save(buf, format="PNG")
    got = pre.image_pixels(buf.getvalue())
    assert got.shape == (1, 28, 28) and torch.equal(got[0], torch.from_numpy(255 - strokes))  # stored inverted


def test_crop_keeps_the_centre_and_stretch_squashes():
    wide = np.zeros((10, 30, 3), dtype=np.uint8)
    wide[:, 10:20] = 255  # a white centre square between black sides
    image = Image.fromarray(wide, "RGB")
    crop = Preprocessing("folder", "image", 3, 10, "crop").image_pixels(image)
    stretch = Preprocessing("folder", "image", 3, 10, "stretch").image_pixels(image)
    assert crop.shape == stretch.shape == (3, 10, 10)
    assert crop.min().item() >= 250  # only the white centre survives the crop
    assert stretch[:, :, 0].max().item() <= 5  # the black sides are squeezed in


# ------------------------------------------------------------------------------ in the run directory
def test_a_run_records_its_preprocessing_and_normalises_with_train_statistics(synthetic_data_root, tmp_path):
    run = tmp_path / "run"
    code, _, err = run_cli("train", "--data-root", synthetic_data_root, "--out", run, "--normalize", *RUN_ARGS)
    assert code == 0, err
    saved = json.loads((run / "preprocessing.json").read_text())
    train = load_split("omniglot", "train", synthetic_data_root, progress=False)
    mean, std = channel_stats(train)
    assert saved["mean"] == list(mean) and saved["std"] == list(std) and saved["invert"] is True
    assert json.loads((run / "config.json").read_text())["data"]["normalize"] is True
    code, out, err = run_cli("eval", run, "--episodes", "3", "--quiet")
    assert code == 0, err
    record = json.loads(next(run.glob("eval-test-*.json")).read_text())
    assert "standardised" in record["protocol"]["preprocessing"]


def test_an_unnormalised_run_still_records_its_decoding(synthetic_data_root, tmp_path):
    run = tmp_path / "run"
    code, _, err = run_cli("train", "--data-root", synthetic_data_root, "--out", run, *RUN_ARGS)
    assert code == 0, err
    saved = Preprocessing.from_dict(json.loads((run / "preprocessing.json").read_text()))
    assert saved == Preprocessing.unnormalised(DATASETS["omniglot"])


# ------------------------------------------------------------------------------ cross-domain evaluation
def write_jpeg_miniimagenet(root: Path, classes: int = 6, per_class: int = 4) -> Path:
    """A tiny mini-ImageNet-layout folder (images/*.jpg + test.csv), RGB 40x30 JPEGs."""
    (root / "images").mkdir(parents=True)
    rng = np.random.default_rng(0)
    rows = ["filename,label"]
    for c in range(classes):
        for i in range(per_class):
            name = f"n{c:08d}{i:08d}.jpg"
            Image.fromarray(rng.integers(0, 256, (30, 40, 3), dtype=np.uint8), "RGB").save(root / "images" / name)
            rows.append(f"{name},n{c:08d}")
    (root / "test.csv").write_text("\n".join(rows) + "\n")
    return root


def test_cross_domain_eval_decodes_the_other_dataset_like_the_run(synthetic_data_root, tmp_path):
    run = tmp_path / "run"
    code, _, err = run_cli("train", "--data-root", synthetic_data_root, "--out", run, *RUN_ARGS)
    assert code == 0, err
    other = write_jpeg_miniimagenet(tmp_path / "mini")
    code, out, err = run_cli("eval", run, "--dataset", "miniimagenet", "--data-root", other, "--episodes", "3",
                             "--quiet")
    assert code == 0, err
    assert "trained on omniglot" in out
    files = sorted(p.name for p in run.glob("eval-*.json"))
    assert len(files) == 1 and files[0].startswith("eval-miniimagenet-")
    record = json.loads((run / files[0]).read_text())
    assert record["protocol"]["cross_domain"] == {"trained_on": "omniglot", "dataset": "miniimagenet",
                                                  "data_root": str(other)}
    assert record["protocol"]["dataset"] == "miniimagenet" and record["episodes"] == 3
    # the other data was decoded at the run's 28x28 grey, not mini-ImageNet's 84x84 RGB
    grey = load_split(DATASETS["miniimagenet"].configured(type("D", (), {"image_size": 28, "channels": 1})()),
                      "test", other, progress=False)
    assert grey.images.shape[1:] == (1, 28, 28)
    # the run's own evaluation keeps its own file
    code, _, err = run_cli("eval", run, "--episodes", "3", "--quiet")
    assert code == 0, err
    assert len(list(run.glob("eval-*.json"))) == 2


def test_cross_domain_eval_refuses_a_dataset_it_cannot_read_in_one_line(synthetic_data_root, tmp_path):
    run = tmp_path / "run"
    code, _, err = run_cli("train", "--data-root", synthetic_data_root, "--out", run, *RUN_ARGS)
    assert code == 0, err
    before = sorted(p.name for p in run.iterdir())
    code, _, err = run_cli("eval", run, "--dataset", "miniimagenet", "--data-root", tmp_path / "nowhere",
                           "--episodes", "3", "--quiet")
    assert code == 2 and err.count("\n") == 1 and "nowhere" in err
    assert sorted(p.name for p in run.iterdir()) == before
