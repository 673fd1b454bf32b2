"""Bad data: each case gives a one-line message naming the file or class; --skip-bad-images skips,
counts and reports unreadable images; any image mode is converted to the dataset's mode."""
from __future__ import annotations

import io
import json
import re
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from l2l_app.cli import cli
from l2l_app.data import images, load_split
from l2l_app.errors import DataError

from conftest import SYNTH_DRAWINGS, corrupt_zip_member, with_own_split_files

TINY = ["--algo", "protonet", "--hidden", "8", "--ways", "5", "--shots", "1", "--queries", "2",
        "--iterations", "2", "--val-every", "2", "--val-episodes", "2", "--device", "cpu", "--quiet"]


@pytest.fixture
def root(synthetic_omniglot) -> Path:
    """A private synthetic Omniglot folder root carrying its own train/val/test.txt."""
    return with_own_split_files(synthetic_omniglot, synthetic_omniglot.folder_root)


def char_dir(root: Path, alphabet="Alpha", char="character02") -> Path:
    return root / "images_background" / alphabet / char


def pngs(folder: Path) -> list:
    return sorted(folder.glob("*.png"))


def load(root, split="train", **kw):
    return load_split("omniglot", split, root, progress=False, **kw)


def one_line(exc_info) -> str:
    text = str(exc_info.value)
    assert "\n" not in text
    return text


def cli_error(*args) -> str:
    result = CliRunner().invoke(cli, [str(a) for a in args])
    assert result.exit_code == 2, result.output
    err = result.stderr.strip()
    assert err.startswith("error: ") and "\n" not in err and "Traceback" not in result.output, err
    return err


# ----------------------------------------------------------------------------- the data root's own split files


def test_data_root_split_files_are_used(root):
    (root / "train.txt").write_text("Alpha/character01/rot000\nAlpha/character02/rot090\n")
    d = load(root)
    assert d.class_names == ["Alpha/character01/rot000", "Alpha/character02/rot090"]
    assert d.images.shape == (2 * SYNTH_DRAWINGS, 1, 28, 28)


def test_packaged_split_files_without_root_files(root):
    for s in ("train", "val", "test"):
        (root / f"{s}.txt").unlink()
    with pytest.raises(DataError) as e:  # the Vinyals split names alphabets the synthetic data lacks
        load(root, cache=False)
    assert "omniglot-vinyals" in one_line(e)


# ----------------------------------------------------------------------------- unreadable images (6 kinds)


def _garbage(p: Path):
    p.write_bytes(b"\x89PNG garbage")


def _truncated(p: Path):
    p.write_bytes(p.read_bytes()[:60])


def _empty(p: Path):
    p.write_bytes(b"")


def _dangling_link(p: Path):
    p.unlink()
    p.symlink_to(p.parent / "nowhere.png")


def _self_link(p: Path):
    p.unlink()
    p.symlink_to(p.name)  # a link to itself: ELOOP


def _not_an_image(p: Path):
    p.write_text("this is a text file with a .png name\n")


BREAKERS = [_garbage, _truncated, _empty, _dangling_link, _self_link, _not_an_image]


@pytest.mark.parametrize("breaker", BREAKERS, ids=lambda f: f.__name__.strip("_"))
def test_unreadable_image_names_the_file_or_is_skipped(root, breaker):
    bad = pngs(char_dir(root))[3]
    breaker(bad)
    with pytest.raises(DataError) as e:
        load(root)
    msg = one_line(e)
    assert str(bad) in msg and "--skip-bad-images" in msg
    d = load(root, skip_bad_images=True)
    assert len(d.skipped) == 1 and str(bad) in d.skipped[0]
    counts = d.class_counts.tolist()
    assert sorted(counts) == [SYNTH_DRAWINGS - 1] * 4 + [SYNTH_DRAWINGS] * 12  # its 4 rotations lost one
    # A split with holes is not cached: a strict load still fails, a skipping one reports again.
    with pytest.raises(DataError):
        load(root)
    assert len(load(root, skip_bad_images=True).skipped) == 1


def test_bad_image_in_a_zip_is_skipped(synthetic_omniglot):
    s = synthetic_omniglot
    zroot = with_own_split_files(s, s.zip_root)
    zpath = zroot / "images_background.zip"
    member = "images_background/Alpha/character01/0001_01.png"  # conftest's naming: alphabet 0, char 1, drawing 1
    assert corrupt_zip_member(zpath, "/Alpha/character01/", 0) == member
    with pytest.raises(DataError) as e:
        load(zroot)
    msg = one_line(e)
    assert msg.startswith(f"cannot decode image {zpath}:{member}: ") and "--skip-bad-images" in msg
    d = load(zroot, skip_bad_images=True)
    assert len(d.skipped) == 1
    # "file: reason"; b"garbage" is no image format PIL knows (PIL's own words name a BytesIO object)
    assert re.fullmatch(rf"cannot decode image {re.escape(str(zpath))}:{re.escape(member)}: "
                        r"PIL cannot identify it \(the file is corrupt or not an image\)[^\n]*",
                        d.skipped[0]), d.skipped[0]
    counts = d.class_counts.tolist()
    assert sorted(counts) == [SYNTH_DRAWINGS - 1] * 4 + [SYNTH_DRAWINGS] * 12  # its 4 rotations lost one


def test_too_many_bad_images_leave_a_class_too_small(root):
    for p in pngs(char_dir(root))[1:]:
        _garbage(p)
    d_err = pytest.raises(DataError, load, root, skip_bad_images=True)
    assert "too few images for class Alpha/character02/rot000" in str(d_err.value)
    assert "after skipping unreadable images" in str(d_err.value)


def test_skip_bad_images_through_the_cli(root, tmp_path):
    bad = pngs(char_dir(root))[5]
    _garbage(bad)
    out = tmp_path / "run"
    err = cli_error("train", "--data-root", root, "--out", out, *TINY)
    assert str(bad) in err and "--skip-bad-images" in err
    result = CliRunner().invoke(cli, ["train", "--data-root", str(root), "--out", str(out), "--overwrite",
                                      "--skip-bad-images", *TINY])
    assert result.exit_code == 0, result.output
    assert "skipped 1 unreadable images" in result.output
    run = json.loads((out / "run.json").read_text())
    assert run["bad_images"] == 1 and str(bad) in run["skipped_images"][0]
    assert json.loads((out / "config.json").read_text())["data"]["skip_bad_images"] is True


# ----------------------------------------------------------------------------- folders and roots


def test_empty_class_folder_names_the_class(root):
    for p in pngs(char_dir(root, char="character03")):
        p.unlink()
    with pytest.raises(DataError) as e:
        load(root)
    msg = one_line(e)
    assert "class Alpha/character03" in msg and "found 0" in msg
    assert f"{char_dir(root, char='character03')}/ holds no .png images" in msg


def test_class_with_too_few_images_for_the_episode_names_it(root, tmp_path):
    for p in pngs(char_dir(root, "Beta_(Two)", "character01"))[4:]:
        p.unlink()
    err = cli_error("train", "--data-root", root, "--out", tmp_path / "r", *TINY[:8], "--queries", "5",
                    *TINY[10:])
    assert "class Beta_(Two)/character01/rot000 of the omniglot train split has only 4 images" in err
    assert "--shots 1 + --queries 5 = 6 are needed" in err


def test_symlink_loop_in_the_data_names_the_link(root):
    link = char_dir(root) / "loop"
    link.symlink_to("..", target_is_directory=True)
    with pytest.raises(DataError) as e:
        load(root)
    assert f"symlink loop in the data: {link} leads back" in one_line(e)


def test_data_root_symlink_loop_and_dangling(tmp_path):
    loop = tmp_path / "loop"
    loop.symlink_to(loop)
    with pytest.raises(DataError, match=rf"data root {loop} is a symlink loop"):
        load(loop)
    dangling = tmp_path / "dangling"
    dangling.symlink_to(tmp_path / "gone")
    with pytest.raises(DataError, match=rf"data root {dangling} is a dangling symlink"):
        load(dangling)


def test_data_root_is_a_file_on_the_cli(tmp_path):
    f = tmp_path / "images_background.zip"
    f.write_bytes(b"PK")
    assert f"data root {f} is a file, not a folder" in cli_error("train", "--data-root", f, "--out",
                                                                 tmp_path / "r", *TINY)


def test_symlinked_class_folder_is_followed(root):
    real = char_dir(root, char="character03")
    moved = root / "elsewhere"
    real.rename(moved)
    real.symlink_to(moved, target_is_directory=True)
    assert load(root).images_per_class == SYNTH_DRAWINGS


# ----------------------------------------------------------------------------- image modes


def _drawing(path: Path) -> Image.Image:
    with Image.open(path) as img:
        img.load()
        return img


def _with_mode(img: Image.Image, mode: str) -> Image.Image:
    """The same drawing in another mode; transparent variants make the white paper transparent
    *and black*, so only compositing over white gives the original back."""
    grey = img.convert("L")
    if mode in ("RGBA", "LA"):
        a = np.asarray(grey)
        alpha = 255 - a  # strokes opaque, paper transparent
        rgb = np.zeros(a.shape + (3,), np.uint8)
        out = Image.fromarray(np.dstack([rgb, alpha]), "RGBA")
        return out if mode == "RGBA" else out.convert("LA")
    if mode == "P-transparent":
        p = grey.convert("P")
        p.info["transparency"] = p.getpixel((0, 0))  # the paper colour's index
        return p
    if mode == "I;16":
        return Image.fromarray(np.asarray(grey).astype(np.uint16) * 257)
    return grey.convert(mode)


MODES = ["1", "L", "RGB", "P", "CMYK", "RGBA", "LA", "P-transparent", "I;16"]


def _decode_variant(img: Image.Image, mode: str, target: str, size: int):
    v = _with_mode(img, mode)
    buf = io.BytesIO()
    v.save(buf, format="TIFF" if mode == "CMYK" else "PNG",
           **({"transparency": v.info["transparency"]} if mode == "P-transparent" else {}))
    return images.decode(buf.getvalue(), f"x.{mode}", target, size)


@pytest.mark.parametrize("mode", MODES)
def test_any_mode_becomes_grey_omniglot(root, mode):
    src = pngs(char_dir(root))[0]
    ref = images.decode(src.read_bytes(), "ref", "L", 28)
    out = _decode_variant(_drawing(src), mode, "L", 28)
    assert out.shape == (28, 28) and out.dtype == np.uint8
    tol = 1 if mode in ("CMYK",) else 0
    assert np.abs(out.astype(int) - ref.astype(int)).max() <= tol


@pytest.mark.parametrize("mode", ["L", "RGBA", "P", "LA"])
def test_any_mode_becomes_rgb_miniimagenet(root, mode):
    src = pngs(char_dir(root))[0]
    ref = images.decode(src.read_bytes(), "ref", "RGB", 84)
    out = _decode_variant(_drawing(src), mode, "RGB", 84)
    assert out.shape == (84, 84, 3)
    assert np.abs(out.astype(int) - ref.astype(int)).max() <= 0


def test_mixed_modes_in_one_class_load(root):
    folder = char_dir(root)
    files = pngs(folder)
    for p, mode in zip(files, ["L", "RGB", "RGBA", "P", "LA", "P-transparent", "I;16"]):
        v = _with_mode(_drawing(p), mode)
        v.save(p, format="PNG", **({"transparency": v.info["transparency"]} if mode == "P-transparent" else {}))
    d = load(root)
    assert d.images.shape[1] == 1 and d.images_per_class == SYNTH_DRAWINGS
