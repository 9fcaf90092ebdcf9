"""Test images with an EXIF orientation: the stored pixels and the file bytes."""

import io

import numpy as np
from PIL import Image

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
