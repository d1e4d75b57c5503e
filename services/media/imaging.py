"""Image decoding and thumbnail rendering with Pillow. Blocking and CPU-heavy: callers run
these functions in the service's thumbnail threads, never on the event loop.

Decompression bombs: the pixel count (per frame, and over all frames of an
animation) is read from the header and checked before anything is decoded.
Pillow is imported on first use, so an idle media process does not carry it.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from matrix_protocol.media import ThumbnailPlan, ThumbnailSpec, plan_thumbnail

if TYPE_CHECKING:
    from PIL.Image import Image

# Formats we decode (what browsers show as images; no vector or document formats).
DECODABLE_FORMATS = frozenset({"PNG", "JPEG", "GIF", "WEBP", "BMP", "TIFF"})
# EXIF orientations that swap width and height.
_TRANSPOSED_ORIENTATIONS = {5, 6, 7, 8}
_DEFAULT_FRAME_MS = 100
_JPEG_QUALITY = 80
_WEBP_QUALITY = 75


class ImageTooLarge(Exception):
    pass


class NotAnImage(Exception):
    pass


@dataclass(frozen=True)
class ImageInfo:
    size: tuple[int, int]  # as displayed (EXIF orientation applied)
    format: str
    frames: int
    transposed: bool  # stored rotated by 90 degrees (EXIF orientation)

    @property
    def animated(self) -> bool:
        return self.frames > 1


@dataclass(frozen=True)
class Rendered:
    data: bytes
    content_type: str
    animated: bool


def _open(path: Path, max_pixels: int) -> tuple[Image, ImageInfo]:
    from PIL import Image, UnidentifiedImageError

    try:
        image = Image.open(path)
    except Image.DecompressionBombError as error:  # Pillow's own limit, if ours is higher
        raise ImageTooLarge(str(error)) from None
    except (UnidentifiedImageError, OSError, ValueError) as error:
        raise NotAnImage(str(error)) from None
    width, height = image.size
    if image.format not in DECODABLE_FORMATS or width < 1 or height < 1:
        image.close()
        raise NotAnImage(f"cannot thumbnail {image.format or 'unknown'} images")
    if width * height > max_pixels:
        image.close()
        raise ImageTooLarge(f"{width}x{height} is more than {max_pixels} pixels")
    transposed = image.getexif().get(0x0112) in _TRANSPOSED_ORIENTATIONS
    size = (height, width) if transposed else (width, height)
    return image, ImageInfo(size, image.format, int(getattr(image, "n_frames", 1)), transposed)


def probe(path: Path, max_pixels: int) -> ImageInfo:
    """Size, format and frame count from the header alone."""
    image, info = _open(path, max_pixels)
    image.close()
    return info


def _resize(frame: Image, plan: ThumbnailPlan) -> Image:
    from PIL import Image

    if plan.box is not None:
        frame = frame.crop(plan.box)
    if frame.size == plan.size:
        return frame
    return frame.resize(plan.size, Image.Resampling.LANCZOS, reducing_gap=3.0)


def _has_alpha(image: Image) -> bool:
    return image.mode in ("RGBA", "LA", "PA") or "transparency" in image.info


def _encode_static(image: Image, source_format: str) -> tuple[bytes, str]:
    out = io.BytesIO()
    if source_format == "JPEG" and not _has_alpha(image):
        image.convert("RGB").save(out, "JPEG", quality=_JPEG_QUALITY, optimize=True)
        return out.getvalue(), "image/jpeg"
    image.convert("RGBA" if _has_alpha(image) else "RGB").save(out, "PNG", optimize=True)
    return out.getvalue(), "image/png"


def render(
    path: Path, specs: list[ThumbnailSpec], *, animated: bool, max_pixels: int
) -> list[Rendered]:
    """Thumbnails of the image at ``path`` for each spec, decoding it once.

    ``animated``: keep an animation (as animated WebP, the format the spec
    prefers) when the source has one and all its frames fit ``max_pixels``;
    otherwise the first frame only.
    """
    from PIL import ImageOps, ImageSequence

    image, info = _open(path, max_pixels)
    with image:
        keep_animation = (
            animated and info.animated and info.frames * info.size[0] * info.size[1] <= max_pixels
        )
        if keep_animation:
            frames = [
                (ImageOps.exif_transpose(frame.convert("RGBA")), frame.info.get("duration"))
                for frame in ImageSequence.Iterator(image)
            ]
            return [_render_animation(frames, plan_thumbnail(info.size, s)) for s in specs]
        plans = [plan_thumbnail(info.size, spec) for spec in specs]
        if info.format == "JPEG":
            # Decode at a reduced scale (JPEG DCT scaling) when even the largest
            # thumbnail is much smaller than the image.
            width, height = max(p.size[0] for p in plans), max(p.size[1] for p in plans)
            image.draft("RGB", (height, width) if info.transposed else (width, height))
        image.seek(0)
        frame = ImageOps.exif_transpose(image)
        scale = frame.size[0] / info.size[0]  # below 1 when drafted
        rendered = []
        for plan in plans:
            if plan.box is not None and scale != 1.0:
                left, top, right, bottom = (round(v * scale) for v in plan.box)
                plan = ThumbnailPlan(plan.size, (left, top, right, bottom))
            elif plan.box is None and scale != 1.0:
                plan = ThumbnailPlan(
                    (min(plan.size[0], frame.size[0]), min(plan.size[1], frame.size[1])), None
                )
            data, content_type = _encode_static(_resize(frame, plan), info.format)
            rendered.append(Rendered(data, content_type, animated=False))
        return rendered


def _render_animation(frames: list[tuple[Image, int | None]], plan: ThumbnailPlan) -> Rendered:
    resized = [_resize(frame, plan) for frame, _ in frames]
    durations = [duration or _DEFAULT_FRAME_MS for _, duration in frames]
    out = io.BytesIO()
    resized[0].save(
        out,
        "WEBP",
        save_all=True,
        append_images=resized[1:],
        duration=durations,
        loop=0,
        quality=_WEBP_QUALITY,
    )
    return Rendered(out.getvalue(), "image/webp", animated=True)
