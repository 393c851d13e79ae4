"""Small interfaces every text and image encoder implements, so models swap by configuration.

Callers (indexing, search, the API) only see `TextEncoder` / `ImageEncoder`: L2-normalised
float32 rows of a fixed `dim`, and a stable `name` that keys caches and artifacts. Heavy
libraries (torch, transformers) are imported inside the concrete classes, never here.
"""

from __future__ import annotations

import logging
import re
from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from tqdm.auto import tqdm

if TYPE_CHECKING:
    from PIL import Image

log = logging.getLogger(__name__)


def l2_normalize(x: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length (all-zero rows stay zero), as contiguous float32."""
    x = np.asarray(x, dtype=np.float32)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    out = np.divide(x, norms, out=np.zeros_like(x), where=norms > 1e-12)
    return np.ascontiguousarray(out, dtype=np.float32)


def batches(n: int, batch_size: int) -> Iterator[tuple[int, int]]:
    """(start, stop) pairs covering range(n); rejects a non-positive batch size early."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    for start in range(0, n, batch_size):
        yield start, min(start + batch_size, n)


def check_texts(texts: Sequence[str]) -> list[str]:
    """A list of str; a bare string is refused (it would be encoded character by character)."""
    if isinstance(texts, str | bytes):
        raise TypeError("texts must be a sequence of strings, not a single string: wrap it in [..]")
    out = list(texts)
    for i, t in enumerate(out):
        if not isinstance(t, str):
            raise TypeError(f"texts[{i}] is {type(t).__name__}, expected str")
    return out


def slug(text: str) -> str:
    """A file-name-safe lower-case id fragment."""
    return re.sub(r"[^a-z0-9._-]+", "-", text.lower()).strip("-") or "model"


def check_model_dir(path: Path | str, what: str) -> Path:
    """The resolved directory, or a clear error if it is missing or not a HF model dir."""
    p = Path(path).expanduser()
    if not p.exists():
        raise FileNotFoundError(f"{what} directory not found: {p}")
    if not p.is_dir():
        raise NotADirectoryError(f"{what} path is not a directory: {p}")
    if not (p / "config.json").is_file():
        raise ValueError(
            f"{p} is not a Hugging Face model directory (no config.json); pass the folder "
            "written by save_pretrained() that holds config.json and the weights"
        )
    return p.resolve()


def pick_device(device: str | None) -> str:
    """The requested device, else CUDA when available, else CPU."""
    if device:
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


class TextEncoder(ABC):
    """Text -> unit vectors. Queries and passages may be encoded differently (E5 prefixes).

    Encoders whose model does not distinguish the two use the same path for both.
    """

    name: str
    dim: int

    @abstractmethod
    def encode_queries(
        self, texts: Sequence[str], batch_size: int = 64, progress: bool = False
    ) -> np.ndarray:
        """Search queries -> float32 (n, dim), L2-normalised rows."""

    @abstractmethod
    def encode_passages(
        self, texts: Sequence[str], batch_size: int = 64, progress: bool = False
    ) -> np.ndarray:
        """Documents (product titles, descriptions) -> float32 (n, dim), L2-normalised rows."""

    def encode(
        self,
        texts: Sequence[str],
        kind: str = "passage",
        batch_size: int = 64,
        progress: bool = False,
    ) -> np.ndarray:
        """Dispatch on kind ("query" | "passage"), for callers that hold the kind as data."""
        if kind == "query":
            return self.encode_queries(texts, batch_size=batch_size, progress=progress)
        if kind == "passage":
            return self.encode_passages(texts, batch_size=batch_size, progress=progress)
        raise ValueError(f"kind must be 'query' or 'passage', got {kind!r}")

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, dim={self.dim})"


@dataclass
class ImageEncoding:
    """Result of encoding image files: one row per input path, failures kept in place.

    `vectors[i]` is all zeros where `ok[i]` is False; `errors[i]` then says why
    (e.g. "images/123.jpg: not an image (cannot identify image file)").
    """

    vectors: np.ndarray
    ok: np.ndarray
    errors: dict[int, str] = field(default_factory=dict)

    @property
    def n_failed(self) -> int:
        """How many files could not be encoded."""
        return int((~self.ok).sum())

    def __len__(self) -> int:
        return len(self.ok)


class ImageLoadError(Exception):
    """One file that cannot be turned into an RGB image; the message names the file."""


def to_rgb(image: Image.Image) -> Image.Image:
    """RGB copy of an image; transparency is flattened onto white, not black.

    Catalogue PNGs often have a transparent background: a plain convert("RGB") would keep
    whatever colour the transparent pixels carry (usually black).
    """
    from PIL import Image

    if image.mode == "RGB":
        return image
    if image.mode in ("RGBA", "LA", "PA") or "transparency" in image.info:
        rgba = image.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    return image.convert("RGB")


def load_rgb(path: Path | str) -> Image.Image:
    """Open and fully decode one image as RGB, or raise ImageLoadError with a per-file reason.

    Decoding happens here (not lazily inside the model) so a truncated or corrupt file is
    caught per file instead of failing a whole batch.
    """
    from PIL import Image, UnidentifiedImageError

    p = Path(path)
    if not p.exists():
        raise ImageLoadError(f"{path}: file not found")
    if not p.is_file():
        raise ImageLoadError(f"{path}: not a regular file")
    try:
        with Image.open(p) as im:
            im.load()
            return to_rgb(im)
    except UnidentifiedImageError:
        raise ImageLoadError(f"{path}: not an image (cannot identify image file)") from None
    except Image.DecompressionBombError as exc:
        raise ImageLoadError(f"{path}: image too large ({exc})") from None
    except (OSError, ValueError, SyntaxError) as exc:  # truncated / corrupt data, permissions
        raise ImageLoadError(f"{path}: unreadable image ({exc})") from None


class ImageEncoder(ABC):
    """Images -> unit vectors. Subclasses implement `encode_images`; file handling is shared."""

    name: str
    dim: int

    @abstractmethod
    def encode_images(self, images: Sequence[Image.Image], batch_size: int = 32) -> np.ndarray:
        """In-memory images (e.g. an uploaded query photo) -> float32 (n, dim), unit rows."""

    def encode_files(
        self, paths: Sequence[Path | str], batch_size: int = 32, progress: bool = False
    ) -> ImageEncoding:
        """Encode image files; a missing, corrupt or non-image file is skipped and reported.

        One bad file never fails the run: its row is zeros, `ok` is False and `errors` holds a
        per-file message. One warning line with the count is logged when any file failed.
        """
        paths = list(paths)
        n = len(paths)
        vectors = np.zeros((n, self.dim), dtype=np.float32)
        ok = np.zeros(n, dtype=bool)
        errors: dict[int, str] = {}
        with tqdm(total=n, disable=not progress, unit="img", desc=f"encode {self.name}") as bar:
            for start, stop in batches(n, batch_size):
                images, rows = [], []
                for i in range(start, stop):
                    try:
                        images.append(load_rgb(paths[i]))
                        rows.append(i)
                    except ImageLoadError as exc:
                        errors[i] = str(exc)
                if images:
                    self._encode_rows(paths, images, rows, vectors, ok, errors)
                bar.update(stop - start)
        if errors:
            first = errors[min(errors)]
            log.warning(
                "%s: %d of %d image files could not be encoded and were skipped (first: %s)",
                self.name, len(errors), n, first,
            )
        return ImageEncoding(vectors=vectors, ok=ok, errors=errors)

    def _encode_rows(self, paths: list, images: list, rows: list[int], vectors: np.ndarray,
                     ok: np.ndarray, errors: dict[int, str]) -> None:
        """One batch; if the model rejects it, retry image by image so one odd file is skipped."""
        try:
            vectors[rows] = self.encode_images(images, batch_size=len(images))
            ok[rows] = True
            return
        except Exception:  # noqa: BLE001 - narrowed down per image below
            log.debug("%s: batch failed, retrying image by image", self.name, exc_info=True)
        for image, i in zip(images, rows):
            try:
                vectors[i] = self.encode_images([image], batch_size=1)[0]
                ok[i] = True
            except Exception as exc:  # noqa: BLE001 - reported per file, the run goes on
                errors[i] = f"{paths[i]}: cannot be encoded ({type(exc).__name__}: {exc})"

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, dim={self.dim})"
