"""Small image utilities without dependencies: uint8 conversion, grids, PNG write and read.

Images travel as float tensors ``(n, C, H, W)`` in [-1, 1] inside diffode and as uint8 arrays
``(n, H, W, C)`` (NHWC, the layout of FID tools' ``.npz`` files) on disk.
"""

from __future__ import annotations

import os
import struct
import zlib
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def to_uint8(images: Tensor) -> np.ndarray:
    """Float images ``(n, C, H, W)`` in [-1, 1] (clipped) → uint8 ``(n, H, W, C)``."""
    if images.ndim != 4:
        raise ValueError(f"images must have shape (n, C, H, W), got {tuple(images.shape)}")
    scaled = ((images.detach().float().cpu().clamp(-1, 1) + 1) * 127.5).round()
    return scaled.to(torch.uint8).permute(0, 2, 3, 1).numpy()


def from_uint8(images: np.ndarray) -> Tensor:
    """uint8 images ``(n, H, W, C)`` (or ``(n, H, W)``) → float32 ``(n, C, H, W)`` in [-1, 1]."""
    array = np.asarray(images)
    if array.dtype != np.uint8:
        raise TypeError(f"images must be uint8 (0 … 255), got dtype {array.dtype}")
    if array.ndim == 3:
        array = array[..., None]
    if array.ndim != 4:
        raise ValueError(f"images must have shape (n, H, W, C) or (n, H, W), got {array.shape}")
    return torch.from_numpy(array.astype(np.float32) / 127.5 - 1.0).permute(0, 3, 1, 2).contiguous()


def grid(images: np.ndarray, columns: int, *, scale: int = 1, pad: int = 1) -> np.ndarray:
    """Tile uint8 images ``(n, H, W, C)`` into one picture, ``columns`` per row, each enlarged
    ``scale`` times (nearest neighbour), ``pad`` mid-grey pixels between tiles and none around
    them (so a one-image grid is that image, enlarged, and reads back with ``diffode encode``)."""
    n, h, w, c = images.shape
    columns = max(1, min(columns, n))
    rows = -(-n // columns)
    big = images.repeat(scale, axis=1).repeat(scale, axis=2)
    hs, ws = h * scale, w * scale
    out = np.full((rows * (hs + pad) - pad, columns * (ws + pad) - pad, c), 128, dtype=np.uint8)
    for i in range(n):
        r, col = divmod(i, columns)
        top, left = r * (hs + pad), col * (ws + pad)
        out[top : top + hs, left : left + ws] = big[i]
    return out


def _chunk(kind: bytes, data: bytes) -> bytes:
    return (
        struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
    )


def write_png(path: str | os.PathLike[str], image: np.ndarray) -> None:
    """Write a uint8 image ``(H, W)``, ``(H, W, 1)`` (grey) or ``(H, W, 3)`` (RGB) as a PNG."""
    array = np.asarray(image)
    if array.dtype != np.uint8:
        raise TypeError(f"image must be uint8, got dtype {array.dtype}")
    if array.ndim == 2:
        array = array[..., None]
    if array.ndim != 3 or array.shape[2] not in (1, 3):
        raise ValueError(f"image must have shape (H, W), (H, W, 1) or (H, W, 3), got {array.shape}")
    h, w, c = array.shape
    color_type = 0 if c == 1 else 2
    # filter type 0 (none) on every row: simple, and zlib does well on these small pictures
    raw = b"".join(b"\x00" + array[row].tobytes() for row in range(h))
    header = struct.pack(">IIBBBBB", w, h, 8, color_type, 0, 0, 0)
    data = (
        _SIGNATURE + _chunk(b"IHDR", header) + _chunk(b"IDAT", zlib.compress(raw, 9)) + _chunk(b"IEND", b"")
    )
    Path(path).write_bytes(data)


def _paeth(a: int, b: int, c: int) -> int:
    p = a + b - c
    pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
    if pa <= pb and pa <= pc:
        return a
    return b if pb <= pc else c


def _unfilter(kind: int, row: bytearray, prev: bytes, bpp: int) -> bytearray:
    if kind == 0:
        return row
    if kind == 2:
        return bytearray((r + p) & 0xFF for r, p in zip(row, prev, strict=True))
    for i in range(len(row)):
        left = row[i - bpp] if i >= bpp else 0
        up = prev[i]
        upleft = prev[i - bpp] if i >= bpp else 0
        if kind == 1:
            row[i] = (row[i] + left) & 0xFF
        elif kind == 3:
            row[i] = (row[i] + ((left + up) >> 1)) & 0xFF
        elif kind == 4:
            row[i] = (row[i] + _paeth(left, up, upleft)) & 0xFF
        else:
            raise ValueError(f"corrupt PNG: unknown row filter {kind}")
    return row


def read_png(path: str | os.PathLike[str]) -> np.ndarray:
    """Read an 8-bit, non-interlaced PNG (grey, grey+alpha, RGB or RGBA) as uint8 grey ``(H, W)``.

    Colour is reduced to luminance (ITU-R 601 weights); alpha is dropped.
    """
    data = Path(path).read_bytes()
    if data[:8] != _SIGNATURE:
        raise ValueError(f"{path} is not a PNG file")
    pos, idat, header = 8, b"", b""
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        kind, body = data[pos + 4 : pos + 8], data[pos + 8 : pos + 8 + length]
        if kind == b"IHDR":
            header = body
        elif kind == b"IDAT":
            idat += body
        elif kind == b"IEND":
            break
        pos += 12 + length
    if len(header) != 13:
        raise ValueError(f"{path}: corrupt PNG (no IHDR chunk)")
    w, h, depth, color_type, _, _, interlace = struct.unpack(">IIBBBBB", header)
    channels = {0: 1, 2: 3, 4: 2, 6: 4}.get(color_type)
    if depth != 8 or channels is None or interlace:
        raise ValueError(
            f"{path}: only 8-bit non-interlaced grey/RGB(A) PNGs are supported "
            f"(got bit depth {depth}, colour type {color_type}, interlace {interlace})"
        )
    raw = zlib.decompress(idat)
    stride = w * channels
    rows, prev = [], bytes(stride)
    for r in range(h):
        start = r * (stride + 1)
        row = _unfilter(raw[start], bytearray(raw[start + 1 : start + 1 + stride]), prev, channels)
        rows.append(row)
        prev = bytes(row)
    pixels = np.frombuffer(b"".join(rows), dtype=np.uint8).reshape(h, w, channels).astype(np.float64)
    if channels >= 3:
        grey = pixels[..., 0] * 0.299 + pixels[..., 1] * 0.587 + pixels[..., 2] * 0.114
    else:
        grey = pixels[..., 0]
    return np.clip(np.round(grey), 0, 255).astype(np.uint8)


def scatter_image(points: np.ndarray, size: int = 256, extent: float = 0.0) -> np.ndarray:
    """Render 2-D points ``(n, 2)`` as a uint8 grey ``(size, size)`` density picture (darker =
    more points, log scale), over the square [-extent, extent]² (0: fitted to 99.5% of the points,
    so that a few outliers do not shrink the picture)."""
    xy = np.asarray(points, dtype=np.float64)
    if xy.ndim != 2 or xy.shape[1] != 2:
        raise ValueError(f"points must have shape (n, 2), got {xy.shape}")
    half = extent or 1.1 * max(float(np.quantile(np.abs(xy), 0.995)), 1e-9)
    counts, _, _ = np.histogram2d(xy[:, 1], xy[:, 0], bins=size, range=[[-half, half], [-half, half]])
    density = np.log1p(counts[::-1]) / max(np.log1p(counts.max()), 1e-12)
    return np.round(255 * (1 - density)).astype(np.uint8)
