"""A learned joint text-image space: two projection towers trained with InfoNCE.

No CLIP weights exist offline, so the shared space is learned from the catalog's own
image-title pairs: image features (EfficientNet-Lite0, 1280-d) and text embeddings (E5, 384-d)
are each projected into a common d-dimensional space where a product's photo and its title land
close together. Symmetric InfoNCE over in-batch negatives, as in CLIP, with a learned
temperature; small enough to train on CPU in about a minute.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from encoders.metrics import retrieval_recall


@dataclass(frozen=True)
class JointConfig:
    """Hyper-parameters of the two towers and their training."""

    dim: int = 256
    hidden: int = 512
    epochs: int = 40
    batch_size: int = 256
    lr: float = 2e-3
    weight_decay: float = 1e-4
    dropout: float = 0.1
    init_temperature: float = 0.07
    seed: int = 0


class JointSpace:
    """Projects image features and text embeddings into one normalised space."""

    def __init__(self, image_dim: int, text_dim: int, config: JointConfig | None = None) -> None:
        import torch
        from torch import nn

        self.config = config or JointConfig()
        self.image_dim, self.text_dim = image_dim, text_dim
        torch.manual_seed(self.config.seed)
        c = self.config
        self.image_tower = nn.Sequential(
            nn.Linear(image_dim, c.hidden), nn.GELU(), nn.Dropout(c.dropout),
            nn.Linear(c.hidden, c.dim),
        )
        self.text_tower = nn.Sequential(
            nn.Linear(text_dim, c.hidden), nn.GELU(), nn.Dropout(c.dropout),
            nn.Linear(c.hidden, c.dim),
        )
        self.log_scale = nn.Parameter(torch.tensor(float(np.log(1 / c.init_temperature))))

    def parameters(self) -> list:
        return [*self.image_tower.parameters(), *self.text_tower.parameters(), self.log_scale]

    def fit(self, image_features: np.ndarray, text_embeddings: np.ndarray,
            progress: bool = False) -> list[float]:
        """Train on aligned pairs (row i of both is one product); returns the loss per epoch."""
        import torch
        import torch.nn.functional as F
        from tqdm.auto import trange

        if len(image_features) != len(text_embeddings):
            raise ValueError("image_features and text_embeddings must have the same rows")
        c = self.config
        generator = torch.Generator().manual_seed(c.seed)
        images = torch.as_tensor(image_features, dtype=torch.float32)
        texts = torch.as_tensor(text_embeddings, dtype=torch.float32)
        optimiser = torch.optim.AdamW(self.parameters(), lr=c.lr, weight_decay=c.weight_decay)
        steps = c.epochs * max(1, int(np.ceil(len(images) / c.batch_size)))
        schedule = torch.optim.lr_scheduler.OneCycleLR(optimiser, max_lr=c.lr, total_steps=steps)
        self._train(True)
        losses = []
        for _ in trange(c.epochs, desc="joint space", disable=not progress):
            order = torch.randperm(len(images), generator=generator)
            total, batches = 0.0, 0
            for start in range(0, len(order), c.batch_size):
                idx = order[start:start + c.batch_size]
                if len(idx) < 2:
                    continue
                zi = F.normalize(self.image_tower(images[idx]), dim=-1)
                zt = F.normalize(self.text_tower(texts[idx]), dim=-1)
                logits = self.log_scale.clamp(max=np.log(100)).exp() * zi @ zt.T
                target = torch.arange(len(idx))
                loss = (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target)) / 2
                optimiser.zero_grad()
                loss.backward()
                optimiser.step()
                schedule.step()
                total, batches = total + float(loss.detach()), batches + 1
            losses.append(total / max(batches, 1))
        self._train(False)
        return losses

    def _train(self, mode: bool) -> None:
        self.image_tower.train(mode)
        self.text_tower.train(mode)

    def embed_images(self, image_features: np.ndarray) -> np.ndarray:
        """Image features -> joint space (L2-normalised float32)."""
        return self._project(self.image_tower, image_features)

    def embed_texts(self, text_embeddings: np.ndarray) -> np.ndarray:
        """Text embeddings -> joint space (L2-normalised float32)."""
        return self._project(self.text_tower, text_embeddings)

    @staticmethod
    def _project(tower: object, features: np.ndarray) -> np.ndarray:
        import torch
        import torch.nn.functional as F

        with torch.no_grad():
            x = torch.as_tensor(np.asarray(features, dtype=np.float32))
            if len(x) == 0:
                return np.zeros((0, tower[-1].out_features), dtype=np.float32)
            return F.normalize(tower(x), dim=-1).numpy()

    def evaluate(self, image_features: np.ndarray, text_embeddings: np.ndarray,
                 ks: tuple[int, ...] = (1, 5, 10)) -> dict[str, float]:
        """Recall@k of text->image and image->text retrieval among the given pairs."""
        zi, zt = self.embed_images(image_features), self.embed_texts(text_embeddings)
        similarity = zt @ zi.T
        out = {f"text_to_image_{k}": v for k, v in retrieval_recall(similarity, ks).items()}
        out.update({f"image_to_text_{k}": v
                    for k, v in retrieval_recall(similarity.T, ks).items()})
        return out

    def save(self, directory: Path) -> None:
        """Weights and config, so search can load the towers without retraining."""
        import torch

        directory.mkdir(parents=True, exist_ok=True)
        torch.save({"image": self.image_tower.state_dict(), "text": self.text_tower.state_dict(),
                    "log_scale": self.log_scale.detach()}, directory / "joint.pt")
        meta = {"image_dim": self.image_dim, "text_dim": self.text_dim,
                "config": asdict(self.config)}
        (directory / "joint.json").write_text(json.dumps(meta, indent=1))

    @classmethod
    def load(cls, directory: Path) -> JointSpace:
        import torch

        meta = json.loads((directory / "joint.json").read_text())
        model = cls(meta["image_dim"], meta["text_dim"], JointConfig(**meta["config"]))
        state = torch.load(directory / "joint.pt", weights_only=True)
        model.image_tower.load_state_dict(state["image"])
        model.text_tower.load_state_dict(state["text"])
        model.log_scale.data = state["log_scale"]
        model._train(False)
        return model
