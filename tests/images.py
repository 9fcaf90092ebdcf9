"""Test images with an EXIF orientation: the stored pixels and the file bytes, the
orientation in each place Pillow reads one from."""

import io
import struct
import zlib

import numpy as np
from PIL import Image, PngImagePlugin

# Stored (sideways) image from the upright one, per EXIF Orientation value (TIFF 6.0 /
# EXIF 2.3: where row 0 / column 0 of the stored image are shown), and back.
TO_STORED = {1: lambda u: u, 2: lambda u: u[:, ::-1], 3: lambda u: u[::-1, ::-1],
             4: lambda u: u[::-1], 5: lambda u: u.swapaxes(0, 1),
             6: lambda u: np.rot90(u, 1), 7: lambda u: u[::-1, ::-1].swapaxes(0, 1),
             8: lambda u: np.rot90(u, -1)}


def with_orientation(upright: np.ndarray, orientation: int, fmt: str) -> bytes:
    exif = Image.Exif()
    exif[0x0112] = orientation
    buffer = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(TO_STORED[orientation](upright))).save(
        buffer, fmt, exif=exif, **({"quality": 95} if fmt == "JPEG" else {}))
    return buffer.getvalue()


def _chunk(kind: bytes, data: bytes) -> bytes:
    """One PNG chunk: length, type, data, CRC-32 of type and data."""
    return (struct.pack(">I", len(data)) + kind + data
            + struct.pack(">I", zlib.crc32(kind + data)))


def _xmp(orientation: int) -> str:
    return ('<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF xmlns:rdf="http://www.w3.org/1999/'
            '02/22-rdf-syntax-ns#"><rdf:Description xmlns:tiff="http://ns.adobe.com/tiff/1.0/" '
            f'tiff:Orientation="{orientation}"/></rdf:RDF></x:xmpmeta>')


def with_orientation_elsewhere(upright: np.ndarray, orientation: int, where: str) -> bytes:
    """A file whose orientation sits where no EXIF block opens it (Pillow's `getexif` finds
    each): a PNG's eXIf chunk after the pixels ("png_exif_after_pixels", as some encoders
    write it), ImageMagick's hex "Raw profile type exif" zTXt chunk ("png_raw_profile", as
    `convert photo.jpg photo.png` keeps a camera's EXIF), XMP's tiff:Orientation in a PNG's
    iTXt chunk ("png_xmp") or a JPEG's APP1 segment ("jpeg_xmp", as photo editors write)."""
    stored = Image.fromarray(np.ascontiguousarray(TO_STORED[orientation](upright)))
    exif = Image.Exif()
    exif[0x0112] = orientation
    raw = exif.tobytes()  # b"Exif\0\0" + the TIFF structure
    buffer, info = io.BytesIO(), PngImagePlugin.PngInfo()
    if where == "png_raw_profile":
        hexed = raw.hex()
        info.add_text("Raw profile type exif", f"\nexif\n{len(raw):8d}\n" + "\n".join(
            hexed[i:i + 72] for i in range(0, len(hexed), 72)) + "\n", zip=True)
    elif where == "png_xmp":
        info.add_itxt("XML:com.adobe.xmp", _xmp(orientation))
    if where == "jpeg_xmp":
        stored.save(buffer, "JPEG", quality=95, xmp=_xmp(orientation).encode())
        return buffer.getvalue()
    stored.save(buffer, "PNG", pnginfo=info)
    png = buffer.getvalue()
    if where == "png_exif_after_pixels":  # before the 12-byte IEND chunk
        return png[:-12] + _chunk(b"eXIf", raw[len(b"Exif\0\0"):]) + png[-12:]
    return png
