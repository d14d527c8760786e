"""Images in every mode Pillow opens come out with the colours the file means, or are refused by name."""

from __future__ import annotations

import numpy as np
from PIL import Image

from helpers import png_claiming, raises_input_error
from pusa.video import MediaError, load_image, probe_video, write_video


def test_a_16_bit_grey_png_keeps_its_values(tmp_path):
    """Pillow's own convert("RGB") clips 16-bit values: the gradient came out solid white."""
    ramp = (np.arange(64, dtype=np.uint16)[None, :] * 1040).repeat(8, axis=0)  # 0 .. 65520
    Image.fromarray(ramp).save(tmp_path / "grey16.png")
    assert Image.open(tmp_path / "grey16.png").mode.startswith("I")
    rgb = np.asarray(load_image(tmp_path / "grey16.png"))
    expected = np.round(ramp / 65535 * 255).astype(np.uint8)
    assert np.array_equal(rgb[..., 0], expected) and np.array_equal(rgb[..., 1], rgb[..., 2])
    assert rgb.min() == 0 and rgb.max() >= 252


def test_palette_la_cmyk_and_rgba_images_come_out_as_their_colours(tmp_path):
    red = Image.new("RGB", (4, 4), (200, 30, 40))
    red.convert("P", palette=Image.Palette.ADAPTIVE).save(tmp_path / "p.png")
    Image.new("LA", (4, 4), (90, 128)).save(tmp_path / "la.png")
    red.convert("CMYK").save(tmp_path / "cmyk.jpg", quality=100)
    Image.new("RGBA", (4, 4), (10, 200, 30, 0)).save(tmp_path / "rgba.png")
    assert tuple(np.asarray(load_image(tmp_path / "p.png"))[0, 0]) == (200, 30, 40)
    assert tuple(np.asarray(load_image(tmp_path / "la.png"))[0, 0]) == (90, 90, 90)
    assert np.abs(np.asarray(load_image(tmp_path / "cmyk.jpg"))[0, 0].astype(int) - (200, 30, 40)).max() <= 6
    assert tuple(np.asarray(load_image(tmp_path / "rgba.png"))[0, 0]) == (10, 200, 30)


def test_an_exif_rotated_photo_is_turned_upright(tmp_path):
    pixels = np.zeros((4, 8, 3), np.uint8)
    pixels[:, :4] = 255  # left half white, landscape as stored
    image = Image.fromarray(pixels)
    exif = image.getexif()
    exif[274] = 6  # "rotate 90 clockwise to view"
    image.save(tmp_path / "rotated.jpg", exif=exif, quality=100)
    upright = load_image(tmp_path / "rotated.jpg")
    assert upright.size == (4, 8)  # portrait, as a viewer shows it
    assert np.asarray(upright)[0, :, 0].mean() > 200 and np.asarray(upright)[-1, :, 0].mean() < 50


def test_unreadable_images_are_refused_by_name(tmp_path):
    Image.fromarray(np.ones((4, 4), np.float32) * 3.5, "F").save(tmp_path / "float.tiff")
    with raises_input_error("image", str(tmp_path / "float.tiff")) as caught:
        load_image(tmp_path / "float.tiff")
    assert isinstance(caught.value, MediaError) and "32-bit floating-point" in str(caught.value)
    (tmp_path / "empty.png").write_bytes(b"")
    with raises_input_error("images", str(tmp_path / "empty.png")):
        load_image(tmp_path / "empty.png", "images")


def test_probe_video_counts_frames_and_names_bad_files(tmp_path):
    clip = write_video(tmp_path / "c.mp4", np.zeros((9, 16, 24, 3), np.uint8), 8.0)
    info = probe_video(clip)
    assert (info.frames, info.width, info.height, info.fps) == (9, 24, 16, 8.0)
    (tmp_path / "junk.mp4").write_bytes(b"\x00" * 100)
    with raises_input_error("end_video", str(tmp_path / "junk.mp4")):
        probe_video(tmp_path / "junk.mp4", "end_video")


def test_an_image_that_claims_too_many_pixels_is_refused_saying_so(tmp_path):
    bomb = tmp_path / "bomb.png"
    bomb.write_bytes(png_claiming(20_000, 20_000))  # 400 M pixels in the header, a few bytes on disk
    with raises_input_error("image", str(bomb)) as caught:
        load_image(bomb)
    assert caught.value.problem == "has too many pixels"
