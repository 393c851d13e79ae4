"""A small real fashion catalog (150 products with photos) for end-to-end tests.

Shared by the search and API tests so both exercise the same slice: six article types, 25
products each, read from the real `styles_sample.csv` with the real photos symlinked in.
Building the workspace (import, encode, learn the joint space) takes about a minute.
"""

from __future__ import annotations

import csv
import os
from pathlib import Path

import pytest

from kg.importers.fashion import default_dir

FASHION = default_dir()
TYPES = ("Shirts", "Tshirts", "Jeans", "Sports Shoes", "Casual Shoes", "Watches")
requires_fashion = pytest.mark.skipif(not (FASHION / "styles_sample.csv").exists(),
                                      reason=f"fashion data not found at {FASHION}")


def sample_rows(n_per_type: int = 25) -> list[list[str]]:
    """Products with photos from six article types (the sample file lists the photos)."""
    with open(FASHION / "styles_sample.csv", newline="", encoding="utf-8") as f:
        rows = list(csv.reader(f))
    header, body = rows[0], rows[1:]
    picked = []
    for kind in TYPES:
        picked += [r for r in body if len(r) == len(header) and r[4] == kind][:n_per_type]
    return [header, *picked]


def write_slice(directory: Path, n_per_type: int = 25) -> Path:
    """A fashion data folder (`styles.csv` + `images/`) that `load_dataset` can read."""
    directory.mkdir(parents=True, exist_ok=True)
    with open(directory / "styles.csv", "w", newline="", encoding="utf-8") as f:
        csv.writer(f).writerows(sample_rows(n_per_type))
    os.symlink(FASHION / "images", directory / "images")
    return directory


def build_workspace(data_dir: Path, workspace: Path, epochs: int = 15) -> Path:
    """Load the slice into an embedded store in `workspace` and build the search artifacts."""
    from encoders.joint import JointConfig
    from kg.embedded import EmbeddedStore
    from kg.importers import load_dataset
    from recommender.content import build_content

    store = EmbeddedStore(workspace / "graph")
    load_dataset("fashion", store, data_dir)
    build_content(store, workspace, joint_config=JointConfig(epochs=epochs, batch_size=64))
    return workspace
