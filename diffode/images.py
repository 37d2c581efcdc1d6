"""Image files: uint8 conversion, grids, PNG write and read (Pillow), image inputs for models.

Images travel as float tensors ``(n, C, H, W)`` in [-1, 1] inside diffode and as uint8 arrays
``(n, H, W, C)`` (NHWC, the layout of FID tools' ``.npz`` files) on disk.
"""

from __future__ import annotations

import json
import os
import zipfile
from collections.abc import Sequence
from pathlib import Path
from typing import BinaryIO

import numpy as np
import torch
from PIL import Image
from PIL.PngImagePlugin import PngInfo
from torch import Tensor

from diffode.atomic import atomic_write
from diffode.validation import require_int, require_nonnegative


def to_uint8(images: Tensor) -> np.ndarray:
    """Float images ``(n, C, H, W)`` in [-1, 1] (clipped) → uint8 ``(n, H, W, C)``."""
    if images.ndim != 4:
        raise ValueError(f"images must have shape (n, C, H, W), got {tuple(images.shape)}")
    if not images.is_floating_point():
        raise TypeError(
            f"images must be floating-point in [-1, 1], got dtype {images.dtype}; uint8 pixels already "
            "are the output (from_uint8 converts them back)"
        )
    bad = (~torch.isfinite(images.detach())).flatten(1).any(1).nonzero()[:, 0]
    if bad.numel():
        shown = f"{bad[:10].tolist()}{' …' if bad.numel() > 10 else ''}"
        raise ValueError(
            f"images {shown} ({bad.numel()} of {images.shape[0]}) hold non-finite values (NaN or inf), "
            "which no pixel value stands for"
        )
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


def _pillow(image: np.ndarray) -> Image.Image:
    """A uint8 ``(H, W)``, ``(H, W, 1)`` (grey) or ``(H, W, 3)`` (RGB) array as a Pillow image."""
    array = np.asarray(image)
    if array.dtype != np.uint8:
        raise TypeError(f"image must be uint8, got dtype {array.dtype}")
    if array.ndim == 3 and array.shape[2] == 1:
        array = array[..., 0]
    if array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[2] != 3):
        raise ValueError(f"image must have shape (H, W), (H, W, 1) or (H, W, 3), got {array.shape}")
    return Image.fromarray(np.ascontiguousarray(array))


def grid(images: np.ndarray, columns: int, *, scale: int = 1, pad: int = 1) -> np.ndarray:
    """Tile uint8 images ``(n, H, W, C)`` into one uint8 picture ``(rows·(H·scale+pad)-pad,
    columns·(W·scale+pad)-pad, C)``, ``columns`` per row, each enlarged ``scale`` times (nearest
    neighbour), ``pad`` mid-grey pixels between tiles and none around them (so a one-image grid is
    that image, enlarged, and reads back with ``diffode encode``)."""
    if images.ndim != 4 or images.shape[0] == 0:
        raise ValueError(f"images must have shape (n >= 1, H, W, C), got {tuple(images.shape)}")
    require_int("columns", columns, low=1)
    require_int("scale", scale, low=1)
    # a negative pad overlaps the tiles, and the grid no longer reads back
    require_int("pad", pad, low=0)
    n, h, w, c = images.shape
    columns = min(columns, n)
    rows = -(-n // columns)
    hs, ws = h * scale, w * scale
    tiles = [_pillow(image).resize((ws, hs), Image.Resampling.NEAREST) for image in images]
    mode = tiles[0].mode if tiles else "L"
    size = (columns * (ws + pad) - pad, rows * (hs + pad) - pad)
    picture = Image.new(mode, size, 128 if mode == "L" else (128, 128, 128))
    for i, tile in enumerate(tiles):
        r, col = divmod(i, columns)
        picture.paste(tile, (col * (ws + pad), r * (hs + pad)))
    return np.asarray(picture).reshape(size[1], size[0], c)


GRID_KEY = "diffode-grid"
"""The PNG text chunk in which :func:`write_grid` records a grid's layout (JSON: ``count``,
``columns``, ``height``, ``width``, ``scale``, ``pad``), so that :func:`load_images` can cut the
grid back into its images."""


def write_png(
    path: str | os.PathLike[str] | BinaryIO, image: np.ndarray, *, text: dict[str, str] | None = None
) -> None:
    """Write a uint8 image ``(H, W)``, ``(H, W, 1)`` (grey) or ``(H, W, 3)`` (RGB) as a PNG, to a
    path (atomically: a failed write leaves an existing file intact) or an open binary file;
    ``text``: PNG text chunks (key: value)."""
    picture = _pillow(image)
    info = PngInfo()
    for key, value in (text or {}).items():
        info.add_text(key, value)
    if isinstance(path, (str, os.PathLike)):
        with atomic_write(path) as fh:
            picture.save(fh, format="PNG", optimize=True, pnginfo=info)
    else:
        picture.save(path, format="PNG", optimize=True, pnginfo=info)


def write_grid(
    path: str | os.PathLike[str] | BinaryIO, images: np.ndarray, columns: int, *, scale: int = 1, pad: int = 1
) -> None:
    """Write uint8 images ``(n, H, W, C)`` as one PNG :func:`grid` that records its layout
    (:data:`GRID_KEY`), so that :func:`load_images` reads n grey images back exactly."""
    require_int("columns", columns, low=1)
    if images.ndim != 4:
        raise ValueError(f"images must have shape (n, H, W, C), got shape {images.shape}")
    n, h, w, _ = images.shape
    columns = min(columns, n)
    layout = {"count": n, "columns": columns, "height": h, "width": w, "scale": scale, "pad": pad}
    write_png(path, grid(images, columns, scale=scale, pad=pad), text={GRID_KEY: json.dumps(layout)})


def read_png(path: str | os.PathLike[str]) -> np.ndarray:
    """Read a PNG (any bit depth, colour type or interlacing Pillow reads) as uint8 grey ``(H, W)``.

    Colour is reduced to luminance (ITU-R 601 weights, Pillow's ``convert("L")``); alpha is
    dropped. A file that is not a complete image raises ``ValueError`` naming it.
    """
    return _read_png(path)[0]


def _read_png(path: str | os.PathLike[str]) -> tuple[np.ndarray, dict[str, str]]:
    """:func:`read_png`, and the file's PNG text chunks."""
    try:
        with Image.open(path) as picture:
            found = picture.format
            if found == "PNG":
                picture.load()
                text = {str(k): str(v) for k, v in getattr(picture, "text", {}).items()}
                if picture.mode.startswith("I"):
                    # 16-bit grey ("I;16", or "I" from older Pillows): convert("L") clips at 255
                    # instead of scaling, so scale 0…65535 to 0…255 here
                    wide = np.asarray(picture, dtype=np.float64)
                    return np.clip(np.rint(wide / 257.0), 0, 255).astype(np.uint8), text
                return np.asarray(picture.convert("L")), text
    except (OSError, SyntaxError, ValueError) as err:
        # Pillow reports broken files as OSError or SyntaxError, and text chunks beyond its
        # decompression limit (PngImagePlugin.MAX_TEXT_CHUNK) as ValueError
        raise ValueError(f"{path} is not a readable PNG file ({_one_line(err)})") from None
    raise ValueError(f"{path} is a {found} file, not a PNG")


def _grid_tiles(name: str, grey: np.ndarray, layout_text: str, h: int, w: int) -> np.ndarray | None:
    """The images ``(n, h, w)`` (uint8) of a grid that :func:`write_grid` wrote, from its layout
    record; ``None`` where the record is damaged or does not describe this picture (another tool
    cropped or resized it and kept the chunk: the picture is then read as one image). A grid of
    images of another size raises ``ValueError`` naming the file."""
    try:
        layout = json.loads(layout_text)
        n, columns, th, tw, scale, pad = (
            layout[k] for k in ("count", "columns", "height", "width", "scale", "pad")
        )
    except (ValueError, KeyError, TypeError, RecursionError):
        return None
    if not all(type(v) is int for v in (n, columns, th, tw, scale, pad)):
        return None
    if min(n, columns, th, tw, scale) < 1 or pad < 0:
        return None
    rows = -(-n // columns)
    hs, ws = th * scale, tw * scale
    if grey.shape != (rows * (hs + pad) - pad, columns * (ws + pad) - pad):
        return None
    if (th, tw) != (h, w):
        raise ValueError(f"{name} is a grid of {th}×{tw} images; the model needs {h}×{w} images")
    tiles = []
    for i in range(n):
        r, col = divmod(i, columns)
        tile = grey[r * (hs + pad) : r * (hs + pad) + hs, col * (ws + pad) : col * (ws + pad) + ws]
        tiles.append(_block_mean(tile, h, w))
    return np.stack(tiles)


def _block_mean(grey: np.ndarray, h: int, w: int) -> np.ndarray:
    """A grey picture ``(h·f, w·f)`` reduced to uint8 ``(h, w)`` by averaging f × f blocks."""
    f = grey.shape[0] // h
    return np.round(grey.astype(np.float64).reshape(h, f, w, f).mean(axis=(1, 3))).astype(np.uint8)


def _one_line(err: BaseException) -> str:
    return str(err).splitlines()[0] if str(err) else type(err).__name__


def read_npz_array(path: str | os.PathLike[str], key: str = "arr_0") -> np.ndarray:
    """The array ``key`` of an ``.npz`` file (never unpickled); ``ValueError`` naming the file when
    it is not a readable ``.npz`` (truncated, not a zip archive, no such array)."""
    # diffode opens the file itself: np.load leaks its handle when the archive is corrupt
    with open(path, "rb") as fh:
        # np.load takes any other bytes for a pickle and suggests allow_pickle=True
        if fh.read(2) != b"PK":
            raise ValueError(f"{path} is not a readable .npz file (not a zip archive)")
        fh.seek(0)
        try:
            archive = np.load(fh, allow_pickle=False)
            if not isinstance(archive, np.lib.npyio.NpzFile):
                raise ValueError("a single .npy array, not an .npz archive")
            if key not in archive.files:
                raise KeyError(f"{path} has no {key} array (found {', '.join(archive.files) or 'nothing'})")
            # members are read (and decompressed) only here, so a truncated archive fails here
            return np.asarray(archive[key])
        except KeyError as err:
            raise ValueError(err.args[0]) from None
        except (OSError, EOFError, zipfile.BadZipFile, ValueError) as err:
            raise ValueError(f"{path} is not a readable .npz file ({_one_line(err)})") from None


def load_images(paths: Sequence[str | os.PathLike[str]], shape: Sequence[int]) -> Tensor:
    """Images for a model whose samples have ``shape`` (C, H, W), as float32 ``(n, C, H, W)`` in
    [-1, 1].

    ``.npz`` files contribute every image under ``arr_0`` (uint8 NHWC, as ``diffode sample``
    writes them); ``.png`` files the images of a grid that :func:`write_grid` wrote (``diffode
    sample --out x.png``), exactly, or else one grey image each, of size H×W or an integer
    multiple of it, reduced by block averaging. Problems raise
    ``ValueError`` (or ``FileNotFoundError``) in one line naming the file.
    """
    if len(shape) != 3:
        raise ValueError(
            f"the model makes samples of shape {tuple(shape)}, not images (C, H, W); "
            "image inputs need an image model"
        )
    c, h, w = (int(v) for v in shape)
    batches = []
    for name in paths:
        path = Path(name)
        if not path.is_file():
            raise FileNotFoundError(f"no such image file: {name}")
        if path.suffix.lower() == ".npz":
            array = read_npz_array(path)  # names the file in its own errors
            try:
                batches.append(from_uint8(array))
            except (TypeError, ValueError) as err:
                # the docstring's promise: one line naming the file
                raise type(err)(f"{name}: {err}") from None
        elif path.suffix.lower() == ".png":
            picture, text = _read_png(path)
            if c != 1 and GRID_KEY in text:
                raise ValueError(
                    f"{name} is a grid of colour images, which is read back for grey models only; "
                    "sample to an .npz (--out x.npz) to encode colour samples"
                )
            layout = text.get(GRID_KEY) if c == 1 else None
            tiles = None if layout is None else _grid_tiles(str(name), picture, layout, h, w)
            if tiles is not None:
                batches.append(from_uint8(tiles[..., None]))
                continue
            grey = picture.astype(np.float64)
            fy, fx = grey.shape[0] // h, grey.shape[1] // w
            if c != 1 or fy < 1 or grey.shape != (fy * h, fx * w) or fx != fy:
                raise ValueError(
                    f"{name} is a {grey.shape[0]}×{grey.shape[1]} PNG; the model needs {c}×{h}×{w} "
                    "images (a grey PNG of that size or a multiple of it for a grey model, or an .npz)"
                )
            batches.append(from_uint8(_block_mean(grey, h, w)[None, :, :, None]))
        else:
            raise ValueError(f"images must be .png or .npz files, got {str(name)!r}")
    images = torch.cat(batches) if batches else torch.zeros(0, c, h, w)
    if len(images) == 0:
        raise ValueError(f"no images in {', '.join(str(p) for p in paths)}")
    if tuple(images.shape[1:]) != (c, h, w):
        raise ValueError(f"the images have shape {tuple(images.shape[1:])}, the model needs {(c, h, w)}")
    return images


def scatter_image(points: np.ndarray, size: int = 256, extent: float = 0.0) -> np.ndarray:
    """Render 2-D points ``(n, 2)`` as a uint8 grey ``(size, size)`` density picture (darker =
    more points, log scale), over the square [-extent, extent]² (0: fitted to 99.5% of the points,
    so that a few outliers do not shrink the picture)."""
    xy = np.asarray(points, dtype=np.float64)
    if xy.ndim != 2 or xy.shape[1] != 2 or xy.shape[0] == 0:
        raise ValueError(f"points must have shape (n, 2) with n >= 1, got {xy.shape}")
    bad = ~np.isfinite(xy).all(1)
    if bad.any():
        raise ValueError(
            f"points must be finite, got NaN or inf in {int(bad.sum())} of {len(xy)} rows (the first: row "
            f"{int(np.argmax(bad))}); drop them first (points[np.isfinite(points).all(1)])"
        )
    size = require_int("size", size, low=1)
    extent = require_nonnegative("extent", extent)
    half = extent or 1.1 * max(float(np.quantile(np.abs(xy), 0.995)), 1e-9)
    counts, _, _ = np.histogram2d(xy[:, 1], xy[:, 0], bins=size, range=[[-half, half], [-half, half]])
    density = np.log1p(counts[::-1]) / max(np.log1p(counts.max()), 1e-12)
    return np.round(255 * (1 - density)).astype(np.uint8)
