"""`sae.images`: the one helper that opens image files — EXIF orientation, modes, sizes, errors."""

from __future__ import annotations

import subprocess
from pathlib import Path

import numpy as np
import pytest
from _image_fixtures import DISPLAY_ROT90, looks_upright, save_oriented, stored_for, upright
from PIL import Image

from sae.images import ImageReadError, as_rgb, displayed_rgb, image_size, open_image

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("orientation", [1, 3, 6, 8])
def test_exif_rotated_photographs_open_upright_with_their_displayed_size(tmp_path, orientation):
    display = upright(40, 64)
    path = save_oriented(tmp_path / f"o{orientation}.jpg", display, orientation)
    with Image.open(path) as raw:  # what a plain PIL open sees: the stored, sideways pixels
        stored_hw = (raw.height, raw.width)
    assert stored_hw == stored_for(display, orientation).shape[:2]
    image = open_image(path)
    assert image.mode == "RGB" and (image.height, image.width) == (40, 64)
    assert image_size(path) == (40, 64)
    assert looks_upright(np.asarray(image))


@pytest.mark.parametrize("orientation", [3, 6, 8])
def test_lossless_png_with_exif_is_exactly_the_upright_picture(tmp_path, orientation):
    display = upright(12, 20)
    path = save_oriented(tmp_path / f"o{orientation}.png", display, orientation, fmt="PNG")
    assert np.array_equal(np.asarray(open_image(path)), display)
    assert image_size(path) == (12, 20)
    assert DISPLAY_ROT90[orientation] != 0


def test_an_already_opened_tagged_image_is_oriented_once(tmp_path):
    path = save_oriented(tmp_path / "o6.png", upright(12, 20), 6, fmt="PNG")
    with Image.open(path) as im:
        once = displayed_rgb(im)
    assert np.array_equal(np.asarray(displayed_rgb(once)), np.asarray(once))  # the tag is gone after one turn
    assert once.size == (20, 12)


def test_grayscale_palette_rgba_and_16_bit_images_become_the_rgb_a_viewer_shows(tmp_path):
    gray = np.full((5, 7), 90, dtype=np.uint8)
    Image.fromarray(gray, mode="L").save(tmp_path / "gray.png")
    assert (np.asarray(open_image(tmp_path / "gray.png")) == 90).all()

    pal = Image.new("P", (4, 3), 1)
    pal.putpalette([0, 0, 0, 10, 200, 30] + [0] * 762)
    pal.save(tmp_path / "palette.png")
    assert (np.asarray(open_image(tmp_path / "palette.png")) == (10, 200, 30)).all()

    transparent_index = Image.new("P", (4, 3), 1)
    transparent_index.putpalette([0, 0, 0, 10, 200, 30] + [0] * 762)
    transparent_index.putpixel((0, 0), 0)
    transparent_index.save(tmp_path / "palette_t.png", transparency=0)
    arr = np.asarray(open_image(tmp_path / "palette_t.png"))
    assert tuple(arr[0, 0]) == (255, 255, 255) and tuple(arr[1, 1]) == (10, 200, 30)

    rgba = np.zeros((3, 4, 4), dtype=np.uint8)
    rgba[..., :3] = (0, 0, 0)  # black under a fully transparent top row: shown as the white page
    rgba[1:, :, :3], rgba[1:, :, 3] = (200, 20, 20), 255
    Image.fromarray(rgba, mode="RGBA").save(tmp_path / "rgba.png")
    arr = np.asarray(open_image(tmp_path / "rgba.png"))
    assert (arr[0] == 255).all() and (arr[1:] == (200, 20, 20)).all()

    deep = np.full((3, 4), 40000, dtype=np.uint16)  # 16-bit grayscale: 40000 / 65535 of full scale
    Image.fromarray(deep).save(tmp_path / "deep.png")
    assert Image.open(tmp_path / "deep.png").mode.startswith("I")
    assert (np.asarray(open_image(tmp_path / "deep.png")) == round(40000 / 257)).all()  # not clipped to 255
    assert as_rgb(Image.new("CMYK", (2, 2), (0, 0, 0, 0))).mode == "RGB"


def test_missing_and_undecodable_files_are_named_in_the_error(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"nope\.jpg"):
        open_image(tmp_path / "nope.jpg")
    (tmp_path / "broken.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    with pytest.raises(ImageReadError, match=r"broken\.jpg"):
        open_image(tmp_path / "broken.jpg")
    with pytest.raises(ImageReadError, match=r"broken\.jpg"):
        image_size(tmp_path / "broken.jpg")
    assert issubclass(ImageReadError, OSError)


def test_no_image_is_opened_outside_the_helper():
    """Every image-loading path goes through `sae.images` (tests may build fixtures with PIL directly)."""
    found = subprocess.run(
        ["git", "grep", "-n", "-E", r"Image\.open\(|imread\(", "--", "*.py", ":!tests/", ":!sae/images.py"],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    if found.returncode == 128:
        pytest.skip(f"not a git checkout: {found.stderr.strip()}")
    assert found.returncode in (0, 1), found.stderr
    assert found.stdout == "", f"open images with sae.images.open_image / image_size:\n{found.stdout}"
