"""Every notebook in notebooks/ runs top to bottom on a small trained workspace, so none can rot.

The workspace is the small shop graph (tests/shop_graph.py) with content vectors and a really
trained recommender (TINY config), built once per module. Each notebook runs in a fresh kernel
of this very interpreter (a temporary kernelspec naming `sys.executable`, checked from inside
the kernel) with SHOPGRAPH_WORKSPACE pointing at that workspace and no NEO4J_* variables, so
they take the embedded-store path. A new notebook is picked up without editing this file;
the three shipped ones also have their answers checked against the library. The graph
exploration and why-recommended notebooks run once more against a real Neo4j 5.26 holding the
same graph and must give the same answers through Cypher.
"""

from __future__ import annotations

import json
import os
import re
import sys
from collections.abc import Callable
from pathlib import Path

import nbformat
import pytest
from jupyter_client.kernelspec import KernelSpecManager
from jupyter_client.manager import AsyncKernelManager
from nbclient import NotebookClient

from kg.embedded import EmbeddedStore
from kg.neo4j_store import Neo4jSettings, Neo4jStore
from recommender.service import RecommendationService
from tests.shop_graph import PURCHASES, small_shop, trained_shop
from tests.test_service import TINY

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK_DIR = ROOT / "notebooks"
NOTEBOOKS = sorted(NOTEBOOK_DIR.glob("*.ipynb"))
KERNEL = "shopgraph-tests"
CELL_TIMEOUT = 300  # seconds per cell; the whole run takes seconds on the small shop
PROBE = "import sys; print('kernel python:', sys.executable)"


# ---- fixtures: one workspace, one kernelspec, executed notebooks cached per module ----------
@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> Path:
    return trained_shop(tmp_path_factory.mktemp("notebook-ws"), TINY)


@pytest.fixture(scope="module")
def kernels(tmp_path_factory) -> Path:
    """A kernelspec directory whose one kernel runs this interpreter (the project's venv)."""
    directory = tmp_path_factory.mktemp("kernels")
    (directory / KERNEL).mkdir()
    (directory / KERNEL / "kernel.json").write_text(json.dumps({
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "shopgraph tests", "language": "python",
    }))
    return directory


@pytest.fixture(scope="module")
def embedded_runs(workspace, kernels) -> Callable[[str], nbformat.NotebookNode]:
    """`run(stem)`: the notebook executed on the embedded workspace, executed once."""
    done: dict[str, nbformat.NotebookNode] = {}

    def run(stem: str) -> nbformat.NotebookNode:
        if stem not in done:
            done[stem] = execute(NOTEBOOK_DIR / f"{stem}.ipynb", kernels,
                                 {"SHOPGRAPH_WORKSPACE": str(workspace)})
        return done[stem]

    return run


def execute(path: Path, kernels: Path, env: dict[str, str]) -> nbformat.NotebookNode:
    """Run a notebook in a fresh kernel from `kernels` (NEO4J_* unset unless in `env`)."""
    nb = nbformat.read(path, as_version=4)
    nb.cells.append(nbformat.v4.new_code_cell(PROBE))
    kernel_env = {k: v for k, v in os.environ.items()
                  if not k.startswith("NEO4J_") and k != "SHOPGRAPH_STORE"}
    kernel_env.update(env)
    manager = AsyncKernelManager(kernel_name=KERNEL,
                                 kernel_spec_manager=KernelSpecManager(kernel_dirs=[str(kernels)]))
    client = NotebookClient(nb, km=manager, timeout=CELL_TIMEOUT, shutdown_kernel="immediate",
                            resources={"metadata": {"path": str(NOTEBOOK_DIR)}})
    client.execute(cleanup_kc=True, env=kernel_env)  # raises CellExecutionError on any error
    probe = nb.cells.pop()
    assert text(probe).strip() == f"kernel python: {sys.executable}"
    return nb


def text(cell: nbformat.NotebookNode) -> str:
    """Everything a cell printed or displayed as text."""
    parts = []
    for output in cell.get("outputs", []):
        if output.output_type == "stream":
            parts.append(output.text)
        elif output.output_type in ("display_data", "execute_result"):
            parts.append(output.data.get("text/plain", ""))
    return "\n".join(parts)


def tagged(nb: nbformat.NotebookNode, tag: str) -> nbformat.NotebookNode:
    cells = [c for c in nb.cells if tag in c.metadata.get("tags", [])]
    assert len(cells) == 1, f"expected one cell tagged {tag!r}, found {len(cells)}"
    return cells[0]


def images(cell: nbformat.NotebookNode) -> int:
    return sum("image/png" in o.get("data", {}) for o in cell.get("outputs", []))


def answers(nb: nbformat.NotebookNode) -> dict[str, str]:
    """The text of every cell tagged `answer`, by its other tag."""
    out = {}
    for cell in nb.cells:
        tags = cell.metadata.get("tags", [])
        if "answer" in tags:
            out[next(t for t in tags if t != "answer")] = text(cell)
    return out


# ---- what each shipped notebook must show ---------------------------------------------------
def check_graph_exploration(nb: nbformat.NotebookNode, workspace: Path) -> None:
    assert "backend: embedded" in text(tagged(nb, "backend"))
    with EmbeddedStore(workspace / "graph") as store:
        counts = store.counts()
    n, r = counts["nodes"], counts["relationships"]
    assert (f"The graph holds {n['Product']} products, {n['Brand']} brands, "
            f"{n['Category']} categories, {n['Attribute']} attribute values and {n['User']} "
            f"shoppers, with {r['INTERACTED']} shopper-product interactions."
            ) in text(tagged(nb, "counts"))
    assert n["Product"] == 8
    # p3 is bought by all six buyers: the most shopped product, looked at in detail
    assert all("p3" in items for items in PURCHASES.values())
    assert "product looked at below: p3" in text(tagged(nb, "popular"))
    product = text(tagged(nb, "product"))
    for fact in ("Acme shirt", "Acme", "Apparel | Apparel > Shirts", "colour=Red"):
        assert fact in product
    brands = text(tagged(nb, "brands")).splitlines()
    assert [line.split()[1:] for line in brands[1:]] == [
        ["b:Acme", "Acme", "3"], ["b:Nova", "Nova", "3"], ["b:Zeta", "Zeta", "2"]]
    history = text(tagged(nb, "history"))
    assert "shopper: u1, 5 interactions" in history
    assert re.findall(r"\bp\d\b", history) == PURCHASES["u1"]  # in time order
    # p1 shares brand and colour with p3; p2 (brand), p5 (category), p7, p8 (colour) one node
    two_hops = [line.split() for line in text(tagged(nb, "two_hops")).splitlines()[1:]]
    assert [row[1] for row in two_hops] == ["p1", "p2", "p5", "p7", "p8"]
    assert two_hops[0][-3:] == ["2", "b:Acme,", "colour=Red"]
    drawing = tagged(nb, "drawing")
    assert images(drawing) == 1
    assert "drew 10 nodes around product p3 and 11 around shopper u1" in text(drawing)


def check_embeddings(nb: nbformat.NotebookNode, workspace: Path) -> None:
    # the TINY workspace has all three: GNN embeddings, ALS factors and content vectors
    assert "embeddings used: gnn, als, content" in text(tagged(nb, "embeddings"))
    projection = tagged(nb, "projection")
    assert images(projection) == 1
    assert "projected gnn, als, content (8 products drawn)" in text(projection)
    neighbours = text(tagged(nb, "neighbours"))
    for probe in ("p3: Acme shirt (Apparel)", "p5: Zeta shirt (Apparel)", "p6: Zeta pan (Home)"):
        assert probe in neighbours


def check_why_recommended(nb: nbformat.NotebookNode, workspace: Path) -> None:
    user = re.search(r"user: (\S+)", text(tagged(nb, "user"))).group(1)
    service = RecommendationService.load(workspace)
    recs = service.recommend(user, k=10, explain=True)
    # the auto-picked shopper has a knowledge-graph reason, and every reason is shown
    assert any(s.startswith("kg_") for rec in recs for s in rec.sources)
    shown = text(tagged(nb, "recommendations"))
    for rec in recs:
        assert rec.reasons and all(reason in shown for reason in rec.reasons)
    history = text(tagged(nb, "history"))
    assert all(product in history for product in service.history_of(user))
    # contributions add up to the service's score, row by row
    rows = [line.split() for line in text(tagged(nb, "contributions")).splitlines()
            if line.split() and line.split()[0] in {r.id for r in recs}]
    assert len(rows) == len(recs)
    assert all(row[-2] == row[-1] for row in rows)
    path = tagged(nb, "path")
    assert images(path) == 1
    kg = next(r for rec in recs for r in rec.reasons
              if r.startswith(("in ", "same brand as", "shares ")))
    assert f"reason: {kg} [kg_" in text(path)
    assert re.search(rf"path: {user} -INTERACTED- .+ -(IN_CATEGORY|MADE_BY|HAS_ATTRIBUTE)- ",
                     text(path))


CHECKS: dict[str, Callable[[nbformat.NotebookNode, Path], None]] = {
    "graph_exploration": check_graph_exploration,
    "embeddings": check_embeddings,
    "why_recommended": check_why_recommended,
}


# ---- tests ----------------------------------------------------------------------------------
def test_the_shipped_notebooks_are_there() -> None:
    assert {p.stem for p in NOTEBOOKS} >= set(CHECKS)


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_is_committed_without_outputs(path: Path) -> None:
    nb = nbformat.read(path, as_version=4)
    nbformat.validate(nb)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert code and any(c.cell_type == "markdown" for c in nb.cells)
    assert all(not c.outputs and c.execution_count is None for c in code)


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_runs_on_a_small_workspace(path: Path, workspace, embedded_runs) -> None:
    nb = embedded_runs(path.stem)
    assert all(o.output_type != "error" for c in nb.cells for o in c.get("outputs", []))
    assert sum(images(c) for c in nb.cells) >= 1  # every notebook draws something
    CHECKS.get(path.stem, lambda *_: None)(nb, workspace)


@pytest.mark.neo4j
@pytest.mark.parametrize("stem", ["graph_exploration", "why_recommended"])
def test_notebook_gives_the_same_answers_on_neo4j(
    stem: str, neo4j_settings: Neo4jSettings, neo4j_store: Neo4jStore, workspace, kernels,
    embedded_runs,
) -> None:
    neo4j_store.load(small_shop())  # the fixture cleared the database first
    nb = execute(NOTEBOOK_DIR / f"{stem}.ipynb", kernels, {
        "SHOPGRAPH_WORKSPACE": str(workspace), "NEO4J_URI": neo4j_settings.uri,
        "NEO4J_USER": neo4j_settings.user, "NEO4J_PASSWORD": neo4j_settings.password,
    })
    embedded = embedded_runs(stem)
    if stem == "graph_exploration":
        assert text(tagged(nb, "backend")).startswith(f"backend: neo4j ({neo4j_settings.uri})")
        got, expected = answers(nb), answers(embedded)
        assert set(got) == {"counts", "popular", "product", "brands", "history", "two_hops"}
        assert got == expected
        assert "The graph holds 8 products" in got["counts"]
        assert text(tagged(nb, "drawing")) == text(tagged(embedded, "drawing"))
    else:  # the graph path behind a reason, found through Neo4j
        assert text(tagged(nb, "path")) == text(tagged(embedded, "path"))
        assert "-IN_CATEGORY-" in text(tagged(nb, "path"))
