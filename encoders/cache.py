"""Content-addressed embedding cache, so re-runs only encode what is new or changed.

Vectors are keyed by the sha256 of their content (the text with its query/passage kind, or an
image file's bytes) and stored per model name under the workspace::

    <directory>/<model_name>/meta.json            {"model_name": ..., "dim": ...}
    <directory>/<model_name>/seg-<time>-<pid>-<rand>.npz   keys (n,) + vectors (n, dim) float32

Every `put_many` appends one new segment file, written to a temporary name and moved into place
with `os.replace`, so a crash never leaves a half-written segment and existing segments are never
rewritten in place. Segments are merged once there are more than `max_segments`. Concurrent
writers do not clobber each other (unique segment names); each sees the others' vectors after
re-opening the cache.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import time
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import BinaryIO

import numpy as np
from tqdm.auto import tqdm

from encoders.base import ImageEncoder, ImageEncoding, TextEncoder, batches, check_texts

log = logging.getLogger(__name__)


def text_key(text: str, kind: str = "passage") -> str:
    """sha256 of kind + text: E5 embeds the same string differently as query and passage."""
    return hashlib.sha256(f"{kind}\x00{text}".encode()).hexdigest()


def bytes_key(data: bytes) -> str:
    """sha256 of raw content, e.g. an image file's bytes (renamed or moved files still hit)."""
    return hashlib.sha256(data).hexdigest()


def _safe_dirname(model_name: str) -> str:
    name = re.sub(r"[^A-Za-z0-9._-]+", "_", model_name).strip("._")
    if not name:
        raise ValueError(f"model_name {model_name!r} gives no usable directory name")
    return name


def _write_atomic(path: Path, write: Callable[[BinaryIO], object]) -> None:
    """Write through `write(fileobj)` to a temp file beside `path`, then os.replace it."""
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        with open(tmp, "wb") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


class EmbeddingCache:
    """Per-model store of vectors by content key; see the module docstring for the layout."""

    def __init__(self, directory: Path | str, model_name: str, max_segments: int = 16) -> None:
        self.model_name = model_name
        self.path = Path(directory) / _safe_dirname(model_name)
        self.max_segments = max_segments
        self.dim: int | None = None
        self._rows: dict[str, int] = {}
        self._chunks: list[np.ndarray] = []
        self._matrix: np.ndarray | None = None
        self._segments: list[Path] = []
        self._load()

    # ---- reading -----------------------------------------------------------------------------
    def _load(self) -> None:
        meta = self.path / "meta.json"
        if meta.is_file():
            info = json.loads(meta.read_text(encoding="utf-8"))
            if info.get("model_name") != self.model_name:
                raise ValueError(
                    f"cache directory {self.path} belongs to model {info.get('model_name')!r}, "
                    f"not {self.model_name!r}"
                )
            self.dim = int(info["dim"])
        if not self.path.is_dir():
            return
        for seg in sorted(self.path.glob("seg-*.npz")):
            try:
                with np.load(seg, allow_pickle=False) as data:
                    keys, vectors = data["keys"], data["vectors"]
            except (OSError, ValueError, KeyError) as exc:
                log.warning("embedding cache: ignoring unreadable segment %s (%s)", seg, exc)
                continue
            if vectors.ndim != 2 or len(keys) != len(vectors) or (
                self.dim is not None and vectors.shape[1] != self.dim
            ):
                log.warning("embedding cache: ignoring malformed segment %s", seg)
                continue
            self._add(list(keys.astype(str)), vectors.astype(np.float32, copy=False))
            self._segments.append(seg)

    def _add(self, keys: list[str], vectors: np.ndarray) -> None:
        base = sum(len(c) for c in self._chunks)
        self._chunks.append(vectors)
        self._matrix = None
        for j, key in enumerate(keys):
            self._rows[key] = base + j

    def _all(self) -> np.ndarray:
        if self._matrix is None:
            dim = self.dim or 0
            self._matrix = (np.concatenate(self._chunks) if self._chunks
                            else np.zeros((0, dim), dtype=np.float32))
            self._chunks = [self._matrix]
        return self._matrix

    def __len__(self) -> int:
        return len(self._rows)

    def __contains__(self, key: object) -> bool:
        return key in self._rows

    def get_many(self, keys: Sequence[str]) -> list[np.ndarray | None]:
        """The cached vector for each key (a float32 copy), or None where it is not cached."""
        if not self._rows:
            return [None] * len(keys)
        matrix = self._all()
        out: list[np.ndarray | None] = []
        for key in keys:
            row = self._rows.get(key)
            out.append(None if row is None else matrix[row].copy())
        return out

    # ---- writing -----------------------------------------------------------------------------
    def put_many(self, keys: Sequence[str], vectors: np.ndarray) -> int:
        """Store vectors under keys (already cached keys are skipped); returns how many were new."""
        vectors = np.asarray(vectors, dtype=np.float32)
        keys = list(keys)
        if vectors.ndim != 2 or len(keys) != len(vectors):
            raise ValueError(f"need one row per key: {len(keys)} keys, vectors {vectors.shape}")
        if self.dim is not None and vectors.shape[1] != self.dim:
            raise ValueError(
                f"cache {self.model_name!r} holds {self.dim}-d vectors, got {vectors.shape[1]}-d"
            )
        seen: set[str] = set()
        fresh = []
        for j, key in enumerate(keys):
            if key not in self._rows and key not in seen:
                seen.add(key)
                fresh.append(j)
        if not fresh:
            return 0
        new_keys = [keys[j] for j in fresh]
        new_vecs = np.ascontiguousarray(vectors[fresh])
        self.path.mkdir(parents=True, exist_ok=True)
        if self.dim is None:
            self.dim = int(vectors.shape[1])
            meta = json.dumps({"model_name": self.model_name, "dim": self.dim}).encode()
            _write_atomic(self.path / "meta.json", lambda fh: fh.write(meta))
        self._write_segment(new_keys, new_vecs)
        self._add(new_keys, new_vecs)
        if len(self._segments) > self.max_segments:
            self.compact()
        return len(new_keys)

    def _write_segment(self, keys: list[str], vectors: np.ndarray) -> Path:
        name = f"seg-{time.time_ns():020d}-{os.getpid()}-{uuid.uuid4().hex[:8]}.npz"
        seg = self.path / name
        key_arr = np.array(keys, dtype="U64")
        _write_atomic(seg, lambda fh: np.savez(fh, keys=key_arr, vectors=vectors))
        self._segments.append(seg)
        return seg

    def compact(self) -> None:
        """Merge all segments this cache has read or written into one (fewer files to open)."""
        if len(self._segments) <= 1:
            return
        old = list(self._segments)
        matrix = self._all()
        keys = [""] * len(matrix)
        for key, row in self._rows.items():
            keys[row] = key
        live = [i for i, k in enumerate(keys) if k]
        self._segments = []
        self._write_segment([keys[i] for i in live], matrix[live])
        for seg in old:
            seg.unlink(missing_ok=True)


def encode_texts_cached(
    encoder: TextEncoder,
    texts: Sequence[str],
    cache: EmbeddingCache,
    kind: str = "passage",
    batch_size: int = 64,
    progress: bool = False,
    chunk_size: int = 4096,
) -> np.ndarray:
    """Like encoder.encode(texts, kind) but only texts missing from the cache are encoded.

    Missing texts are encoded and stored `chunk_size` at a time, so an interrupted run keeps
    what it had finished.
    """
    _check_model(encoder.name, cache)
    texts = check_texts(texts)
    keys = [text_key(t, kind) for t in texts]
    cached = cache.get_many(keys)
    todo: dict[str, int] = {}  # one text per distinct missing key
    for i, (key, vec) in enumerate(zip(keys, cached)):
        if vec is None and key not in todo:
            todo[key] = i
    fresh: dict[str, np.ndarray] = {}
    todo_keys = list(todo)
    with tqdm(total=len(todo_keys), disable=not progress, unit="text",
              desc=f"encode {encoder.name} {kind}") as bar:
        for start, stop in batches(len(todo_keys), chunk_size):
            chunk = todo_keys[start:stop]
            vecs = encoder.encode([texts[todo[k]] for k in chunk], kind=kind,
                                  batch_size=batch_size)
            cache.put_many(chunk, vecs)
            fresh.update(zip(chunk, vecs))
            bar.update(len(chunk))
    out = np.zeros((len(texts), encoder.dim), dtype=np.float32)
    for i, (key, vec) in enumerate(zip(keys, cached)):
        out[i] = vec if vec is not None else fresh[key]
    return out


def encode_files_cached(
    encoder: ImageEncoder,
    paths: Sequence[Path | str],
    cache: EmbeddingCache,
    batch_size: int = 32,
    progress: bool = False,
    chunk_size: int = 1024,
) -> ImageEncoding:
    """Like encoder.encode_files(paths) but files whose bytes are cached are not decoded again.

    Keys are the sha256 of each file's bytes, so a renamed or copied image still hits. Files
    that cannot be read or decoded are never cached: they are retried (and reported by the
    encoder, one warning line per chunk) on every run. New vectors are stored `chunk_size`
    files at a time, so an interrupted run keeps what it had finished.
    """
    _check_model(encoder.name, cache)
    paths = list(paths)
    keys: list[str | None] = []
    for p in paths:
        try:
            keys.append(bytes_key(Path(p).read_bytes()))
        except OSError:
            keys.append(None)  # the encoder reports it (missing, a directory, no permission)
    cached = cache.get_many([k or "" for k in keys])
    n = len(paths)
    vectors = np.zeros((n, encoder.dim), dtype=np.float32)
    ok = np.zeros(n, dtype=bool)
    errors: dict[int, str] = {}
    todo: list[int] = []  # one index per distinct missing content (or per unreadable file)
    first_of: dict[str, int] = {}
    for i, (key, vec) in enumerate(zip(keys, cached)):
        if vec is not None:
            vectors[i], ok[i] = vec, True
        elif key is None:
            todo.append(i)
        elif key not in first_of:
            first_of[key] = i
            todo.append(i)
    with tqdm(total=len(todo), disable=not progress, unit="img",
              desc=f"encode {encoder.name}") as bar:
        for start, stop in batches(len(todo), chunk_size):
            rows = todo[start:stop]
            res = encoder.encode_files([paths[i] for i in rows], batch_size=batch_size)
            good = [j for j in range(len(rows)) if res.ok[j]]
            cache.put_many([keys[rows[j]] or "" for j in good], res.vectors[good])
            for j, i in enumerate(rows):
                vectors[i], ok[i] = res.vectors[j], bool(res.ok[j])
                if j in res.errors:
                    errors[i] = res.errors[j]
            bar.update(len(rows))
    for i, key in enumerate(keys):  # later copies of content that was missing: share its result
        src = first_of.get(key) if key is not None else None
        if src is not None and src != i and not ok[i] and i not in errors:
            vectors[i], ok[i] = vectors[src], ok[src]
            if src in errors:
                errors[i] = errors[src].replace(str(paths[src]), str(paths[i]), 1)
    return ImageEncoding(vectors=vectors, ok=ok, errors=errors)


def _check_model(name: str, cache: EmbeddingCache) -> None:
    if cache.model_name != name:
        raise ValueError(
            f"cache is for model {cache.model_name!r} but the encoder is {name!r}: "
            "vectors of different models must not mix"
        )
