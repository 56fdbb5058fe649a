"""Decoding odd image modes to correct RGB, refusing bad files, encoding, crop/resize."""
import io
import pickle
import struct
import zlib

import numpy as np
import pytest
from PIL import Image, ImageFile

from jaxface.data import imageio
from jaxface.data.imageio import ImageDecodeError, decode_image


def _save(image: Image.Image, path, fmt=None, **kwargs):
    image.save(path, format=fmt, **kwargs)
    return path


def _png_chunk(tag: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)


def _png_rgb16(pixels: np.ndarray) -> bytes:
    """A 16-bit-per-channel RGB PNG (Pillow cannot write one), written chunk by chunk."""
    h, w, _ = pixels.shape
    raw = b"".join(b"\x00" + row.astype(">u2").tobytes() for row in pixels)
    header = struct.pack(">IIBBBBB", w, h, 16, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", header) + _png_chunk(b"IDAT", zlib.compress(raw))
            + _png_chunk(b"IEND", b""))


def _tiff_rgb16(pixels: np.ndarray) -> bytes:
    """A baseline little-endian uncompressed 16-bit RGB TIFF, one strip."""
    h, w, _ = pixels.shape
    data = pixels.astype("<u2").tobytes()
    num_entries = 10
    ifd_offset = 8
    bits_offset = ifd_offset + 2 + 12 * num_entries + 4
    data_offset = bits_offset + 6
    entries = [  # (tag, type, count, value); type 3 SHORT, 4 LONG
        (256, 4, 1, w), (257, 4, 1, h), (258, 3, 3, bits_offset), (259, 3, 1, 1), (262, 3, 1, 2),
        (273, 4, 1, data_offset), (277, 3, 1, 3), (278, 4, 1, h), (279, 4, 1, len(data)), (284, 3, 1, 1),
    ]
    out = b"II" + struct.pack("<HI", 42, ifd_offset) + struct.pack("<H", num_entries)
    for tag, typ, count, value in entries:
        packed = struct.pack("<HI", value, 0)[:4] if typ == 3 and count == 1 else struct.pack("<I", value)
        out += struct.pack("<HHI", tag, typ, count) + packed
    out += struct.pack("<I", 0) + struct.pack("<HHH", 16, 16, 16)
    return out + data


def _jpeg_bytes(shape=(24, 32), color=(200, 30, 60)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", shape[::-1], color).save(buffer, "JPEG", quality=95)
    return buffer.getvalue()


# ------------------------------------------------------------------------------------- good files
def test_rgb_png_is_exact_and_path_equals_bytes(tmp_path):
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, (20, 30, 3), dtype=np.uint8)
    path = _save(Image.fromarray(pixels), tmp_path / "a.png")
    out = decode_image(path)
    assert out.dtype == np.uint8 and out.shape == (20, 30, 3)
    np.testing.assert_array_equal(out, pixels)
    np.testing.assert_array_equal(decode_image(path.read_bytes()), pixels)
    np.testing.assert_array_equal(decode_image(str(path)), pixels)


@pytest.mark.parametrize("mode", ["L", "1"])
def test_grayscale_is_replicated(tmp_path, mode):
    gray = np.array([[0, 255], [255, 0]], np.uint8).repeat(4, 0).repeat(4, 1)
    image = Image.fromarray(gray).convert(mode)
    out = decode_image(_save(image, tmp_path / f"g{mode}.png"))
    assert out.shape == (8, 8, 3)
    np.testing.assert_array_equal(out, np.stack([gray] * 3, -1))


def test_la_composites_over_white(tmp_path):
    gray = np.full((4, 4), 40, np.uint8)
    alpha = np.array([[0, 255, 0, 255]] * 4, np.uint8)
    image = Image.merge("LA", [Image.fromarray(gray), Image.fromarray(alpha)])
    out = decode_image(_save(image, tmp_path / "la.png"))
    np.testing.assert_array_equal(out[:, 0], np.full((4, 3), 255))  # transparent -> white
    np.testing.assert_array_equal(out[:, 1], np.full((4, 3), 40))  # opaque -> its gray


def test_rgba_composites_over_white(tmp_path):
    rgba = np.zeros((2, 2, 4), np.uint8)
    rgba[0, 0] = (255, 0, 0, 128)  # half-transparent red
    rgba[0, 1] = (0, 0, 255, 255)  # opaque blue
    rgba[1, 0] = (0, 0, 0, 0)  # fully transparent black
    rgba[1, 1] = (10, 200, 30, 255)
    out = decode_image(_save(Image.fromarray(rgba), tmp_path / "rgba.png")).astype(int)
    np.testing.assert_allclose(out[0, 0], (255, 127, 127), atol=1)
    np.testing.assert_array_equal(out[0, 1], (0, 0, 255))
    np.testing.assert_array_equal(out[1, 0], (255, 255, 255))
    np.testing.assert_array_equal(out[1, 1], (10, 200, 30))


def test_colour_key_transparency_composites_over_white(tmp_path):
    pixels = np.zeros((2, 2, 3), np.uint8)
    pixels[0, 0] = (10, 20, 30)  # the colour key: transparent
    pixels[1, 1] = (200, 100, 50)
    path = _save(Image.fromarray(pixels), tmp_path / "key.png", "PNG", transparency=(10, 20, 30))
    assert "transparency" in Image.open(path).info
    out = decode_image(path)
    np.testing.assert_array_equal(out[0, 0], (255, 255, 255))
    np.testing.assert_array_equal(out[1, 1], (200, 100, 50))
    np.testing.assert_array_equal(out[0, 1], (0, 0, 0))


@pytest.mark.parametrize("fmt", ["PNG", "GIF"])
def test_palette_with_transparency(tmp_path, fmt):
    indices = np.array([[0, 1], [2, 1]], np.uint8)
    image = Image.frombytes("P", (2, 2), indices.tobytes())
    palette = [0, 0, 0, 20, 180, 40, 250, 250, 0] + [0, 0, 0] * 253
    image.putpalette(palette)
    path = _save(image, tmp_path / f"p.{fmt.lower()}", fmt, transparency=0)
    assert Image.open(path).mode == "P"
    out = decode_image(path)
    np.testing.assert_array_equal(out[0, 0], (255, 255, 255))  # transparent index -> white
    np.testing.assert_array_equal(out[0, 1], (20, 180, 40))
    np.testing.assert_array_equal(out[1, 0], (250, 250, 0))


@pytest.mark.parametrize("fmt", ["PNG", "TIFF"])
def test_16_bit_grayscale_scales_to_8_bit(tmp_path, fmt):
    values = np.array([[0, 257 * 100, 65535, 257 * 7]], np.uint16)
    path = _save(Image.fromarray(values), tmp_path / f"g16.{fmt.lower()}", fmt)
    assert Image.open(path).mode.startswith("I;16")
    out = decode_image(path)
    # A naive convert('L') would clip 25700 to 255; full scale must map to 255 and 257*v to v.
    np.testing.assert_array_equal(out[..., 0], [[0, 100, 255, 7]])
    np.testing.assert_array_equal(out[..., 0], out[..., 2])


@pytest.mark.parametrize("writer,suffix", [(_png_rgb16, "png"), (_tiff_rgb16, "tif")])
def test_16_bit_rgb_scales_to_8_bit(tmp_path, writer, suffix):
    pixels = np.array([[[65535, 128 * 257, 0], [0, 65535, 10 * 257]]], np.uint16)
    path = tmp_path / f"rgb16.{suffix}"
    path.write_bytes(writer(pixels))
    out = decode_image(path)
    np.testing.assert_array_equal(out, [[[255, 128, 0], [0, 255, 10]]])


def test_32_bit_integer_and_float_modes(tmp_path):
    ints = np.array([[0, 65535, 257 * 50]], np.int32)
    path = _save(Image.fromarray(ints), tmp_path / "i32.tif", "TIFF")
    assert Image.open(path).mode == "I"
    np.testing.assert_array_equal(decode_image(path)[..., 1], [[0, 255, 50]])
    floats = np.array([[0.0, 1.0, 0.5]], np.float32)
    path = _save(Image.fromarray(floats), tmp_path / "f.tif", "TIFF")
    assert Image.open(path).mode == "F"
    np.testing.assert_array_equal(decode_image(path)[..., 0], [[0, 255, 128]])


def test_cmyk_jpeg(tmp_path):
    cmyk = np.zeros((16, 16, 4), np.uint8)
    cmyk[:, :8] = (255, 0, 0, 0)  # pure cyan
    cmyk[:, 8:] = (0, 0, 0, 255)  # pure black
    image = Image.frombytes("CMYK", (16, 16), cmyk.tobytes())
    path = _save(image, tmp_path / "cmyk.jpg", "JPEG", quality=95)
    assert Image.open(path).mode == "CMYK"
    out = decode_image(path).astype(int)
    np.testing.assert_allclose(out[4:12, 1:5].mean((0, 1)), (0, 255, 255), atol=6)
    np.testing.assert_allclose(out[4:12, 11:15].mean((0, 1)), (0, 0, 0), atol=6)


def test_exif_orientation_is_applied(tmp_path):
    # Stored 40 wide x 20 tall, left half red, right half blue; orientation 6 = rotate 90 degrees
    # clockwise for display, so the decoded image is 20 wide x 40 tall with red on top.
    pixels = np.zeros((20, 40, 3), np.uint8)
    pixels[:, :20] = (230, 20, 20)
    pixels[:, 20:] = (20, 20, 230)
    exif = Image.Exif()
    exif[0x0112] = 6
    path = _save(Image.fromarray(pixels), tmp_path / "rot.jpg", "JPEG", quality=95, exif=exif)
    out = decode_image(path).astype(int)
    assert out.shape == (40, 20, 3)
    np.testing.assert_allclose(out[5:15, 5:15].mean((0, 1)), (230, 20, 20), atol=12)
    np.testing.assert_allclose(out[25:35, 5:15].mean((0, 1)), (20, 20, 230), atol=12)


# -------------------------------------------------------------------------------------- bad files
def _bad_files(tmp_path):
    good = _jpeg_bytes((64, 64))
    png = io.BytesIO()
    Image.fromarray(np.full((64, 64, 3), 90, np.uint8)).save(png, "PNG")
    files = {
        "empty.jpg": b"",
        "garbage.jpg": np.random.default_rng(0).integers(0, 256, 2000, dtype=np.uint8).tobytes(),
        "html.jpg": b"<html><body>404 Not Found</body></html>",
        "truncated.jpg": good[: len(good) // 2],
        "truncated.png": png.getvalue()[: len(png.getvalue()) - 40],
    }
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
    return [tmp_path / name for name in files]


def test_bad_files_raise_with_path_and_reason(tmp_path):
    for path in _bad_files(tmp_path) + [tmp_path / "missing.jpg"]:
        with pytest.raises(ImageDecodeError) as info:
            decode_image(path)
        assert info.value.path == str(path)
        assert str(path) in str(info.value) and info.value.reason
    with pytest.raises(ImageDecodeError, match="empty"):
        decode_image(tmp_path / "empty.jpg")
    with pytest.raises(ImageDecodeError, match="truncated"):
        decode_image(tmp_path / "truncated.jpg")
    with pytest.raises(ImageDecodeError, match="<bytes>"):
        decode_image(b"not an image")


def test_truncated_refused_even_if_pil_is_told_to_accept(tmp_path, monkeypatch):
    (path,) = [p for p in _bad_files(tmp_path) if p.name == "truncated.jpg"]
    monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", True)
    with pytest.raises(ImageDecodeError, match="truncated"):
        decode_image(path)
    assert ImageFile.LOAD_TRUNCATED_IMAGES is True  # the caller's setting is restored


def test_decompression_bomb_is_refused(tmp_path):
    header = struct.pack(">IIBBBBB", 30000, 30000, 8, 2, 0, 0, 0)
    bomb = (b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", header)
            + _png_chunk(b"IDAT", zlib.compress(b"")) + _png_chunk(b"IEND", b""))
    with pytest.raises(ImageDecodeError, match="decompression bomb"):
        decode_image(bomb)
    with pytest.raises(ImageDecodeError, match="exceeds the limit of 100"):
        decode_image(_jpeg_bytes((16, 16)), max_pixels=100)
    assert decode_image(_jpeg_bytes((16, 16)), max_pixels=256).shape == (16, 16, 3)


def test_decode_error_pickles():
    err = pickle.loads(pickle.dumps(ImageDecodeError("/x/y.jpg", "broken")))
    assert isinstance(err, ValueError) and err.path == "/x/y.jpg" and err.reason == "broken"


# --------------------------------------------------------------------------------------- encoding
def test_save_png_uint8_and_float(tmp_path):
    pixels = np.random.default_rng(1).integers(0, 256, (6, 7, 3), dtype=np.uint8)
    path = imageio.save_png(tmp_path / "deep" / "dir" / "u8.png", pixels)
    np.testing.assert_array_equal(decode_image(path), pixels)
    path = imageio.save_png(tmp_path / "f.png", pixels.astype(np.float32) / 255.0)
    np.testing.assert_array_equal(decode_image(path), pixels)
    out_of_range = np.array([[[-0.5, 0.5, 2.0]]], np.float32)
    np.testing.assert_array_equal(decode_image(imageio.save_png(tmp_path / "c.png", out_of_range)),
                                  [[[0, 128, 255]]])
    gray = imageio.save_png(tmp_path / "g.png", pixels[..., 0])
    np.testing.assert_array_equal(decode_image(gray)[..., 2], pixels[..., 0])
    with pytest.raises(TypeError):
        imageio.save_png(tmp_path / "bad.png", pixels.astype(np.int64))


def test_encode_jpeg_quality():
    rng = np.random.default_rng(2)
    pixels = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
    low, high = imageio.encode_jpeg(pixels, 10), imageio.encode_jpeg(pixels, 95)
    assert low[:2] == b"\xff\xd8" and len(low) < len(high)
    decoded = decode_image(low)
    assert decoded.shape == pixels.shape and not np.array_equal(decoded, pixels)
    assert np.abs(decode_image(high).astype(int) - pixels).mean() < np.abs(decoded.astype(int) - pixels).mean()
    with pytest.raises(ValueError, match="1..100"):
        imageio.encode_jpeg(pixels, 0)


# ---------------------------------------------------------------------------------- crop / resize
def _bars():
    """60 wide x 40 tall: red 10-px bars left and right of a green 40x40 centre with a blue dot."""
    image = np.zeros((40, 60, 3), np.uint8)
    image[:, :10] = (255, 0, 0)
    image[:, 50:] = (255, 0, 0)
    image[:, 10:50] = (0, 255, 0)
    image[10:20, 30:40] = (0, 0, 255)
    return image


def test_center_crop_resize_takes_the_centre_square():
    out = imageio.center_crop_resize(_bars(), 20)
    assert out.shape == (20, 20, 3) and out.dtype == np.uint8
    assert out[..., 0].max() < 40  # no red bar survives the centre crop
    np.testing.assert_array_equal(out[..., 0], imageio.center_crop_resize(_bars(), 20, crop_box=[np.nan] * 4)[..., 0])


def test_center_crop_resize_crops_exactly_the_box():
    out = imageio.center_crop_resize(_bars(), 8, crop_box=np.array([30, 10, 40, 20], np.float32))
    blue = np.broadcast_to(np.array([0, 0, 255], np.uint8), (8, 8, 3))
    np.testing.assert_array_equal(out[2:6, 2:6], blue[2:6, 2:6])
    np.testing.assert_allclose(out, blue, atol=20)  # the filter reaches just past the box edges
    # A box reaching outside the image is padded black, not clipped (the mapping stays exact).
    out = imageio.center_crop_resize(_bars(), 10, crop_box=(-60, 0, 60, 40))
    assert out.shape == (10, 10, 3)
    assert out[:, :4].max() <= 2  # the left half of the box lies outside the image
    assert out[5, 7, 1] > 200  # green centre lands at the box's right half
    with pytest.raises(ValueError, match="x1 > x0"):
        imageio.center_crop_resize(_bars(), 8, crop_box=(10, 10, 5, 20))
    with pytest.raises(ValueError, match="uint8"):
        imageio.center_crop_resize(_bars().astype(np.float32), 8)


def test_square_box_and_resize():
    np.testing.assert_allclose(imageio.square_box((10, 20, 30, 60)), (0, 20, 40, 60))
    np.testing.assert_allclose(imageio.center_square_box(40, 60), (10, 0, 50, 40))
    out = imageio.resize(_bars(), 20, 30)
    assert out.shape == (20, 30, 3)
    assert out[10, 1, 0] > 200 and out[10, 15, 1] > 200
