"""LightGCN over the user-product graph, optionally widened with the knowledge graph.

Layering. This module is the model only (`LightGCNEncoder`: graph building, propagation,
sampling, BPR training, embeddings of new products, saving the trained state); the
`Recommender` over it (scoring, unseen users, validation by Recall@k, checkpoints) is
`recommender.gnn.GraphRecommender`. Encoders never import the recommender layer: validation
during training comes in as a callback.

Model (He et al. 2020, LightGCN): every node has a learned id embedding (layer 0); a layer is
one multiplication by the symmetrically normalised adjacency D^-1/2 A D^-1/2, with no weights
and no non-linearity; the final embedding is the mean of layers 0..K. Scores are dot products
of final user and product embeddings, trained with BPR.

Knowledge graph. When `fit` gets a `HeteroData` (from `kg.export.GraphSnapshot`), every edge
type that does not touch users (product-brand, product-category, category-category,
product-attribute, product-entity SAME_AS, entity-entity REL, ...) is added, undirected, to the
same homogeneous graph, and the KG nodes get id embeddings too. Products that share a brand,
a category or a linked entity then exchange messages through that node: the simplest
relational message passing over the KG (types only set an optional per-type edge weight; no
per-relation transforms as in KGAT/R-GCN). User-product edges come only from the `user_items`
passed to `fit`, never from the graph, so test interactions stored in the graph cannot leak.

Features. With `product_features` (n_products x d, e.g. content vectors) a product's layer-0
embedding is its id embedding plus a linear projection of its features, so a product without
interactions still lands near products with similar content, and a product added after
training gets an embedding from its features alone (`embed_new_products`).

BPR pairs. Each epoch draws as many (user, positive, negative) triples as there are training
interactions. `pairs="users"` (the default, LightGCN's reference sampler) draws the user
uniformly among users with history, then one of their products, so every user weighs alike in
the loss, as in per-user metrics like Recall@20; `pairs="interactions"` takes every training
pair once, weighing a user by their history's length. On ml-100k-kg (lr 5e-3, early stopping
on validation, KG edges) "users" reached test Recall@20 0.1994 / NDCG@20 0.2040 against
0.1879 / 0.1959. Negatives are uniform over products, re-drawn while they are positives.

Scale. `sampling` chooses how a BPR batch propagates; "auto" (the default) takes "full" while
the normalised adjacency holds at most `max_full_nnz` entries (5M), "neighbour" above.
- "full": exact LightGCN over the whole graph for every batch, as LightGCN's reference code
  does; memory O(entries + nodes x dim). One fused autograd function per batch
  (`_propagated_rows`) runs int32-indexed CSR products into fresh outputs, propagates the
  gradient back through the (symmetric) adjacency and computes the last layer on user and
  product rows only; Adam is torch's fused kernel.
- "neighbour": a batch propagates only over the sampled K-hop neighbourhood of its users,
  positives and negatives (`NeighbourSampler`, vectorised in torch on the training device;
  PyG's samplers need pyg-lib or torch-sparse, absent here). A node first reached at hop h
  keeps all its neighbours when it has at most `fanout[h]`, else `fanout[h]` uniform draws
  with replacement, each weighted deg / draws times its normalised edge weight: the
  GraphSAGE-style Hansen-Hurwitz estimator, unbiased for each layer's neighbour sum given the
  layer below. A batch touches at most 3 * batch_size * (1 + f0 + f0 f1 + ...) nodes
  whatever the graph's size, and only those rows get (lazy) Adam updates.
Parameters and Adam moments are O(nodes x dim) in both modes. Final embeddings, for scoring
and for validation, always come from one exact propagation without autograd, `chunk_rows`
adjacency rows at a time per layer. On ml-100k-kg (12.5k nodes of which 9.9k KG, 258k
entries; 80k training rows, batch 2048, dim 64, 3 layers, one thread, on the shared 2-core
machine, CPU s/epoch measured side by side with RecBole's LightGCN at 1.25-1.4): full with
KG edges ~0.95 (was ~1.5 before these changes), full without ~0.53, neighbour (fanout 10)
~0.95. The sparse products are about 70 % of a full epoch.

Devices and seeds. device="auto" (the default) trains on CUDA when torch sees a GPU, else
on the CPU; sampling, features and optimisers live on that device (negatives are drawn by
numpy and moved once per epoch), and checkpoints hold CPU tensors that `load_state` (via
`GraphRecommender.load(..., device=...)`) places anywhere (a GPU-trained one opens on a
machine without a GPU). With a `seed`, numpy draws the pairs and the negatives and torch the
initialisation and the neighbour samples, so two CPU fits give identical embeddings in both
modes (on CUDA, atomic scatter-adds may change the last bits).
"""

from __future__ import annotations

import json
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, Any, Self

import numpy as np
import scipy.sparse as sp

if TYPE_CHECKING:
    import torch
    from torch_geometric.data import HeteroData

USER_TYPE, PRODUCT_TYPE = "user", "product"
CONFIG_FILE, STATE_FILE = "config.json", "state.pt"
SAMPLING_MODES = ("auto", "full", "neighbour")
PAIR_MODES = ("interactions", "users")


def _edge_name(edge_type: tuple[str, str, str]) -> str:
    return edge_type[1]


def _binarised(matrix: sp.csr_matrix) -> sp.csr_matrix:
    """The matrix's pattern with every stored value set to 1 (float32); the same as
    `recommender.base.binarised`, repeated here because encoders never import recommender."""
    out = sp.csr_matrix(matrix, dtype=np.float32, copy=True)
    out.eliminate_zeros()
    out.data[:] = 1.0
    return out


def build_adjacency(
    user_items: sp.csr_matrix, graph: HeteroData | None = None,
    edge_weights: dict[str, float] | None = None, prune: bool = True,
) -> tuple[sp.csr_matrix, dict[str, tuple[int, int]]]:
    """The normalised undirected adjacency D^-1/2 A D^-1/2 and each node type's row range.

    Rows: users first, then products, then the KG node types in the graph's order (only
    those some used edge touches). Interaction edges are binary and come from `user_items`
    only; a KG edge type gets weight `edge_weights[relation name]` (default 1; 0 drops it).
    Duplicate and reversed copies of an edge count once; self-loops are dropped. With
    `prune`, KG nodes that end up with at most one neighbour are removed (see
    `_prune_kg_leaves`) and the KG ranges shrink accordingly.
    """
    n_users, n_items = user_items.shape
    offsets: dict[str, tuple[int, int]] = {USER_TYPE: (0, n_users),
                                           PRODUCT_TYPE: (n_users, n_users + n_items)}
    coo = _binarised(user_items).tocoo()
    rows = [coo.row.astype(np.int64)]
    cols = [coo.col.astype(np.int64) + n_users]
    vals = [np.ones(coo.nnz, dtype=np.float32)]
    weights = edge_weights or {}
    if graph is not None:
        if graph[PRODUCT_TYPE].num_nodes != n_items:
            raise ValueError(f"graph has {graph[PRODUCT_TYPE].num_nodes} products, user_items "
                             f"{n_items} columns: export both from the same snapshot")
        size = n_users + n_items
        for edge_type in graph.edge_types:
            src_type, _, dst_type = edge_type
            weight = float(weights.get(_edge_name(edge_type), 1.0))
            index = graph[edge_type].get("edge_index")
            if USER_TYPE in (src_type, dst_type) or weight <= 0 or index is None:
                continue
            if index.shape[1] == 0:
                continue
            for node in (src_type, dst_type):
                if node not in offsets:
                    count = int(graph[node].num_nodes)
                    offsets[node] = (size, size + count)
                    size += count
            src = index[0].cpu().numpy().astype(np.int64) + offsets[src_type][0]
            dst = index[1].cpu().numpy().astype(np.int64) + offsets[dst_type][0]
            pairs = np.unique(np.stack([np.minimum(src, dst), np.maximum(src, dst)], 1), axis=0)
            pairs = pairs[pairs[:, 0] != pairs[:, 1]]
            rows.append(pairs[:, 0])
            cols.append(pairs[:, 1])
            vals.append(np.full(len(pairs), weight, dtype=np.float32))
    n_nodes = max(end for _, end in offsets.values())
    row, col, val = np.concatenate(rows), np.concatenate(cols), np.concatenate(vals)
    upper = sp.coo_matrix((val, (row, col)), shape=(n_nodes, n_nodes)).tocsr()
    upper.sum_duplicates()
    adj = (upper + upper.T).tocsr()
    if prune and n_nodes > n_users + n_items:
        adj, offsets = _prune_kg_leaves(adj, offsets, n_users + n_items)
    degree = np.asarray(adj.sum(axis=1)).ravel()
    inv_sqrt = np.zeros_like(degree, dtype=np.float64)
    inv_sqrt[degree > 0] = degree[degree > 0] ** -0.5
    scale = sp.diags(inv_sqrt)
    norm = (scale @ adj @ scale).tocsr().astype(np.float32)
    return norm, offsets


def _prune_kg_leaves(
    adj: sp.csr_matrix, offsets: dict[str, tuple[int, int]], first_kg: int,
) -> tuple[sp.csr_matrix, dict[str, tuple[int, int]]]:
    """Drop KG nodes with at most one neighbour, repeatedly, and renumber the rest.

    Such a node cannot pass a message between two products, yet costs an embedding row, an
    Adam update and a share of its neighbour's normalisation. On ml-100k-kg this keeps about
    9.9k of 34.6k entities; dense per-node work, not the sparse product, dominated an epoch.
    Users and products are always kept; each type's kept nodes stay in their original order.
    """
    n_nodes = adj.shape[0]
    binary = (adj > 0).astype(np.float32).tocsr()
    alive = np.ones(n_nodes, dtype=bool)
    kg = np.zeros(n_nodes, dtype=bool)
    kg[first_kg:] = True
    while True:
        degree = binary @ alive.astype(np.float32)
        drop = alive & kg & (degree <= 1)
        if not drop.any():
            break
        alive &= ~drop
    keep = np.flatnonzero(alive)
    new_offsets: dict[str, tuple[int, int]] = {}
    for node, (lo, hi) in offsets.items():
        start = int(np.searchsorted(keep, lo))
        stop = int(np.searchsorted(keep, hi))
        if stop > start or node in (USER_TYPE, PRODUCT_TYPE):
            new_offsets[node] = (start, stop)
    return adj[keep][:, keep].tocsr(), new_offsets


def _csr(crow: torch.Tensor, col: torch.Tensor, values: torch.Tensor,
         shape: tuple[int, int]) -> torch.Tensor:
    """A sparse CSR tensor, with int32 indices whenever they fit.

    torch's CPU (MKL) product converts int64 indices to int32 on every call, two copies the
    size of the matrix; with int32 indices the product runs without any copy (measured on
    ml-100k-kg, 258k entries x 64: 2.7 ms instead of 3.2 ms, and 8.6 ms through
    `torch.sparse.mm`, which also allocates, zero-fills and copies its output).
    """
    import torch

    if max(values.numel(), shape[0], shape[1]) < 2**31 - 1:
        crow, col = crow.to(torch.int32), col.to(torch.int32)
    with warnings.catch_warnings():  # "sparse CSR support is in beta", once per process
        warnings.simplefilter("ignore", UserWarning)
        return torch.sparse_csr_tensor(crow, col, values, size=shape, check_invariants=False)


def _spmm_into(out: torch.Tensor, matrix: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """out = matrix @ x without allocating: `addmm(beta=0, out=)` is the copy-free product."""
    import torch

    if matrix._nnz() == 0:  # an empty block (isolated seeds): no library call on it
        return out.zero_()
    return torch.addmm(out, matrix, x, beta=0, out=out)


def _row_block(indptr: torch.Tensor, indices: torch.Tensor, values: torch.Tensor,
               lo: int, hi: int, n_cols: int) -> torch.Tensor:
    """Rows lo:hi of a CSR matrix given by its parts, as a CSR tensor (views, no copy of
    the entries)."""
    start, stop = int(indptr[lo]), int(indptr[hi])
    return _csr(indptr[lo: hi + 1] - start, indices[start:stop], values[start:stop],
                (hi - lo, n_cols))


@dataclass
class Propagation:
    """The sparse operators one LightGCN forward pass runs through.

    Nodes are local rows; the first `sizes[j]` of them are the ones layer K - j is needed on
    (sizes[0]: the seeds whose final embeddings are wanted, sizes[K]: every node whose
    layer-0 embedding is read). `blocks[j]` (sizes[j] x sizes[j+1]) maps a layer on the first
    sizes[j+1] nodes to the next layer on the first sizes[j]; `transposes[j]` is its
    transpose, for the backward pass. Full propagation (`_full_propagation`): the blocks are
    the whole normalised adjacency, the last layer's restricted to user and product rows.
    """

    blocks: list[torch.Tensor]
    transposes: list[torch.Tensor]
    sizes: list[int]


@cache
def _propagated_rows() -> type:
    """(final[index], ego[index]) with final = mean of layers 0..K over a `Propagation`.

    One autograd function for the whole LightGCN pass of a batch. LightGCN is linear, so
    nothing is saved for backward but the operators and the index: forward is Horner's rule,
    g = ego + B_j g from the innermost block out (one sparse product and one add per layer);
    backward scatters the rows' gradients, pushes the propagated part out through the
    transposes and sums what reaches each layer. Fusing the gathers in saves three dense
    passes over all rows per batch (index backward allocates and zero-fills a full-size
    gradient per gather, then autograd adds them). Each product writes into a fresh buffer
    with `_spmm_into`: torch's own autograd for sparse @ dense re-transposes the matrix (a
    sort) on every backward call and `torch.sparse.mm` copies its output twice.
    """
    import torch

    class PropagatedRows(torch.autograd.Function):
        @staticmethod
        def forward(ctx: Any, ego: torch.Tensor, plan: Propagation,
                    index: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            ctx.plan, ctx.index = plan, index
            depth = len(plan.blocks)
            out = ego[: plan.sizes[depth]]
            for j in reversed(range(depth)):
                layer = _spmm_into(ego.new_empty((plan.sizes[j], ego.shape[1])),
                                   plan.blocks[j], out)
                out = layer.add_(ego[: plan.sizes[j]])
            return _take(out, index).mul_(1.0 / (depth + 1)), _take(ego, index)

        @staticmethod
        def backward(ctx: Any, grad_final: torch.Tensor,
                     grad_ego: torch.Tensor) -> tuple[torch.Tensor, None, None]:
            plan, index = ctx.plan, ctx.index
            depth = len(plan.blocks)
            width = grad_final.shape[1]
            reaches = [grad_final.new_zeros((plan.sizes[0], width)).index_add_(
                0, index, grad_final, alpha=1.0 / (depth + 1))]
            for j in range(depth):
                reaches.append(_spmm_into(grad_final.new_empty((plan.sizes[j + 1], width)),
                                          plan.transposes[j], reaches[-1]))
            total = reaches.pop()  # the widest; the others are added into it, no zero-fill
            for reach in reaches:
                total[: len(reach)] += reach
            return total.index_add_(0, index, grad_ego), None, None

    return PropagatedRows


class NeighbourSampler:
    """Sampled K-hop neighbourhoods over a CSR graph, vectorised in torch on its device.

    A node first reached at hop h (the seeds at hop 0) keeps all its neighbours when it has
    at most `fanouts[h]` (-1: always all), otherwise `fanouts[h]` uniform draws with
    replacement; nodes reached at hop K are not expanded. Each kept edge v -> u is weighted
    `A[v, u] * deg(v) / draws(v)` (deg = count of neighbours), repeats summed: the
    Hansen-Hurwitz estimator, so the sampled row times any fixed vector has the full row's
    product as its expectation (GraphSAGE's sampling; exact when deg <= fanout). Every node
    is sampled once per call and the same draws serve every layer (as PyG's
    NeighborSampler). Per call the work and memory are O(nodes and edges touched), at most
    seeds * (1 + f0 + f0 f1 + ...) nodes, plus one persistent int64 lookup per graph node
    (global -> local row), reset after each call. No python loop runs per node.

    PyG's own `NeighborSampler`/`LinkNeighborLoader` need pyg-lib or torch-sparse for
    homogeneous graphs, neither of which is installed here.
    """

    def __init__(self, indptr: torch.Tensor, indices: torch.Tensor, values: torch.Tensor,
                 fanouts: tuple[int, ...], generator: torch.Generator | None = None) -> None:
        import torch

        self.indptr, self.indices, self.values = indptr.long(), indices.long(), values
        self.fanouts = tuple(int(f) for f in fanouts)
        self.generator = generator
        self.degree = self.indptr[1:] - self.indptr[:-1]
        self._local = torch.full((len(self.degree),), -1, dtype=torch.long,
                                 device=indptr.device)

    def bound(self, n_seeds: int) -> int:
        """The most nodes `sample` can return for `n_seeds` seeds (fanout -1 counts as
        the largest degree)."""
        largest = int(self.degree.max()) if len(self.degree) else 0
        total, frontier = n_seeds, n_seeds
        for fan in self.fanouts:
            frontier *= largest if fan < 0 else fan
            total += frontier
        return total

    def sample(self, seeds: torch.Tensor) -> SampledNeighbourhood:
        """The neighbourhood of `seeds` (distinct node ids), seeds first in the given order."""
        import torch

        device = self.indptr.device
        local = self._local
        seeds = seeds.to(device=device, dtype=torch.long)
        visited = [seeds]
        try:
            local.index_copy_(0, seeds, torch.arange(len(seeds), device=device))
            sizes = [len(seeds)]
            rows, cols, weights = [], [], []
            frontier, first = seeds, 0
            for fan in self.fanouts:
                degree = _take(self.degree, frontier)
                take = degree if fan < 0 else degree.clamp(max=fan)
                starts = torch.cumsum(take, 0) - take
                total = int(take.sum())
                owner = torch.repeat_interleave(
                    torch.arange(len(frontier), device=device), take, output_size=total)
                slot = torch.arange(total, device=device) - _take(starts, owner)
                deg, kept = _take(degree, owner), _take(take, owner)
                draw = (torch.rand(total, generator=self.generator, device=device)
                        * deg).long().minimum(deg - 1)
                pos = (_take(_take(self.indptr, frontier), owner)
                       + torch.where(deg > kept, draw, slot))
                neighbour = _take(self.indices, pos)
                weights.append(_take(self.values, pos) * (deg / kept).to(self.values.dtype))
                fresh = torch.unique(neighbour[_take(local, neighbour) < 0])
                local.index_copy_(0, fresh, torch.arange(sizes[-1], sizes[-1] + len(fresh),
                                                         device=device))
                visited.append(fresh)
                rows.append(owner + first)
                cols.append(_take(local, neighbour))
                first = sizes[-1]
                sizes.append(first + len(fresh))
                frontier = fresh
        finally:
            nodes = torch.cat(visited)
            local[nodes] = -1
        if not rows:
            empty = torch.zeros(0, dtype=torch.long, device=device)
            return SampledNeighbourhood(nodes, sizes, empty, empty,
                                        self.values.new_zeros(0))
        return SampledNeighbourhood(nodes, sizes, torch.cat(rows), torch.cat(cols),
                                    torch.cat(weights))


def _take(x: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """x[index] along dim 0: `index_select` is 4-6x faster than advanced indexing on CPU,
    forward and backward (measured: 6k rows of a 12.5k x 64 table)."""
    import torch

    return torch.index_select(x, 0, index)


@dataclass
class SampledNeighbourhood:
    """What `NeighbourSampler.sample` returns: global ids of the local rows (seeds first,
    then each hop's new nodes), the node counts reached by hop 0..K, and the weighted
    sampled edges (local row -> local column, repeats not yet summed)."""

    nodes: torch.Tensor
    sizes: list[int]
    row: torch.Tensor
    col: torch.Tensor
    weight: torch.Tensor

    def propagation(self) -> Propagation:
        """Blocks and transposes for `_propagated_rows`: repeats summed, rows sorted (rows are
        produced hop by hop, so block j is a prefix of one CSR), transposes from one sort."""
        import torch

        n = self.sizes[-1]
        device = self.nodes.device
        keys, inverse = torch.unique(self.row * n + self.col, return_inverse=True)
        weight = self.weight.new_zeros(len(keys)).index_add_(0, inverse, self.weight)
        row, col = keys // n, keys % n
        crow = torch.searchsorted(row, torch.arange(n + 1, device=device))
        order = torch.argsort(col * n + row)
        t_row, t_col, t_weight = _take(col, order), _take(row, order), _take(weight, order)
        blocks, transposes = [], []
        for j in range(len(self.sizes) - 1):
            rows_j, cols_j = self.sizes[j], self.sizes[j + 1]
            nnz = int(crow[rows_j])
            blocks.append(_csr(crow[: rows_j + 1], col[:nnz], weight[:nnz], (rows_j, cols_j)))
            keep = t_col < rows_j
            kept_row, kept_col, kept_weight = (x.masked_select(keep)
                                               for x in (t_row, t_col, t_weight))
            t_crow = torch.searchsorted(kept_row, torch.arange(cols_j + 1, device=device))
            transposes.append(_csr(t_crow, kept_col, kept_weight, (cols_j, rows_j)))
        return Propagation(blocks, transposes, list(self.sizes))


def _full_propagation(norm: sp.csr_matrix, n_scored: int, layers: int,
                      device: torch.device) -> Propagation:
    """Whole-graph LightGCN where only the first `n_scored` rows (users, products) are read.

    Every layer but the last runs over the whole adjacency A. The last one is needed on
    user and product rows only, which come first: A[:n_scored] there, and in backward its
    transpose A[:, :n_scored] (A is symmetric), whose input is the small scored block.
    On ml-100k-kg (12.5k nodes, 2.6k scored, 258k entries) these two products touch 165k
    entries instead of 258k, mostly within the cache-resident user/product rows.
    """
    import torch

    n = norm.shape[0]

    def tensor(matrix: sp.csr_matrix) -> torch.Tensor:
        matrix = sp.csr_matrix(matrix)
        matrix.sort_indices()
        return _csr(*(torch.as_tensor(a, device=device) for a in (
            matrix.indptr.astype(np.int64), matrix.indices.astype(np.int64),
            matrix.data.astype(np.float32))), matrix.shape)

    if layers == 0:
        return Propagation([], [], [n_scored])
    whole = tensor(norm)
    return Propagation([tensor(norm[:n_scored])] + [whole] * (layers - 1),
                       [tensor(norm[:, :n_scored])] + [whole] * (layers - 1),
                       [n_scored] + [n] * layers)


def _network(n_nodes: int, dim: int, feature_dim: int, init_std: float) -> torch.nn.Module:
    """Id embeddings for every node plus, with features, a bias-free product projection."""
    import torch

    class Network(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.embedding = torch.nn.Embedding(n_nodes, dim)
            torch.nn.init.normal_(self.embedding.weight, std=init_std)
            self.projection = (torch.nn.Linear(feature_dim, dim, bias=False)
                               if feature_dim else None)

    return Network()


def _adam(params: list[torch.Tensor], lr: float, device: torch.device) -> torch.optim.Optimizer:
    """Adam, fused where torch has the kernel (one pass over the parameters instead of ~7:
    0.9 ms instead of 3.3 ms per step for 12.5k x 64 embeddings on CPU)."""
    import torch

    if device.type in ("cpu", "cuda"):
        return torch.optim.Adam(params, lr=lr, fused=True)
    return torch.optim.Adam(params, lr=lr)


class _RowAdam:
    """Adam on the rows a batch touched only (lazy Adam, the semantics of torch's SparseAdam):
    other rows' moments neither decay nor move them, so a step costs O(rows touched).

    SparseAdam itself coalesces a sparse gradient every step (a sort), which made it 30 % of
    a sampled epoch on ml-100k-kg; a sampled neighbourhood's rows are already distinct, so the
    update here is a handful of gathers and scatters over them.
    """

    def __init__(self, weight: torch.Tensor, lr: float, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8) -> None:
        import torch

        self.weight, self.lr, self.betas, self.eps = weight, lr, betas, eps
        self.exp_avg = torch.zeros_like(weight)
        self.exp_avg_sq = torch.zeros_like(weight)
        self.steps = 0

    def step(self, rows: torch.Tensor, grad: torch.Tensor) -> None:
        """One Adam step on `weight[rows]` (distinct rows) with their gradient."""
        import torch

        beta1, beta2 = self.betas
        self.steps += 1
        with torch.no_grad():
            avg = _take(self.exp_avg, rows).lerp_(grad, 1 - beta1)
            avg_sq = _take(self.exp_avg_sq, rows).mul_(beta2).addcmul_(grad, grad,
                                                                       value=1 - beta2)
            self.exp_avg.index_copy_(0, rows, avg)
            self.exp_avg_sq.index_copy_(0, rows, avg_sq)
            denom = avg_sq.sqrt_().div_((1 - beta2 ** self.steps) ** 0.5).add_(self.eps)
            self.weight.index_add_(0, rows, avg.div_(denom),
                                   alpha=-self.lr / (1 - beta1 ** self.steps))


class LightGCNEncoder:
    """LightGCN trained with BPR: user and product embeddings from a binary users x products
    CSR matrix, optionally widened with KG edges (`HeteroData`) and product features.

    The model alone, with no ranking or evaluation, so that the encoders layer never imports
    the recommender layer: `recommender.gnn.GraphRecommender` wraps it as a `Recommender`
    (scoring, unseen users, checkpoints) and hands validation in as a callback to `fit`.
    """

    def __init__(
        self, dim: int = 64, layers: int = 3, epochs: int = 50, batch_size: int = 2048,
        learning_rate: float = 1e-3, regularization: float = 1e-4, seed: int | None = 0,
        device: str = "auto", edge_weights: dict[str, float] | None = None,
        eval_every: int = 5, patience: int = 3, init_std: float = 0.1,
        prune_kg_leaves: bool = True, num_threads: int | None = None, verbose: bool = False,
        sampling: str = "auto", fanout: int | Sequence[int] = 10,
        max_full_nnz: int = 5_000_000, chunk_rows: int = 1 << 16,
        pairs: str = "users",
    ) -> None:
        if dim < 1 or layers < 0 or epochs < 0 or batch_size < 1:
            raise ValueError("dim and batch_size must be >= 1, layers and epochs >= 0")
        if pairs not in PAIR_MODES:
            raise ValueError(f"pairs must be one of {PAIR_MODES}, got {pairs!r}")
        if sampling not in SAMPLING_MODES:
            raise ValueError(f"sampling must be one of {SAMPLING_MODES}, got {sampling!r}")
        if isinstance(fanout, np.integer):
            fanout = int(fanout)
        fanouts = (fanout,) * layers if isinstance(fanout, int) else tuple(fanout)
        if len(fanouts) != layers or any(int(f) < 1 and int(f) != -1 for f in fanouts):
            raise ValueError(f"fanout must be an int or {layers} ints (one per layer), each "
                             f">= 1 or -1 (all neighbours); got {fanout!r}")
        if chunk_rows < 1:
            raise ValueError("chunk_rows must be >= 1")
        self.dim, self.layers, self.epochs, self.batch_size = dim, layers, epochs, batch_size
        self.learning_rate, self.regularization, self.seed = learning_rate, regularization, seed
        self.device, self.edge_weights = device, dict(edge_weights or {})
        self.eval_every, self.patience = eval_every, patience
        self.init_std, self.num_threads, self.verbose = init_std, num_threads, verbose
        self.prune_kg_leaves = prune_kg_leaves
        self.sampling, self.max_full_nnz, self.chunk_rows = sampling, max_full_nnz, chunk_rows
        self.pairs = pairs
        self.fanout: int | tuple[int, ...] = (int(fanout) if isinstance(fanout, int)
                                              else tuple(int(f) for f in fanout))
        self.epoch_seconds: list[float] = []  # wall time of each training epoch
        self.epoch_cpu_seconds: list[float] = []  # this process's CPU time of each epoch
        self.history: list[dict[str, float]] = []  # validation results, one per evaluation
        self.best_epoch: int | None = None
        self.sampling_used: str | None = None  # "full" or "neighbour", set by fit
        self.max_batch_nodes = 0  # most nodes one training batch propagated over
        self.n_users = self.n_items = 0
        self.offsets: dict[str, tuple[int, int]] = {}
        self.feature_dim = 0
        self.network: Any = None
        self.user_embeddings: np.ndarray | None = None
        self.item_embeddings: np.ndarray | None = None

    # ---- configuration ---------------------------------------------------------------------
    def config(self) -> dict[str, Any]:
        """Hyper-parameters (what `__init__` takes), JSON-serialisable."""
        return {"dim": self.dim, "layers": self.layers, "epochs": self.epochs,
                "batch_size": self.batch_size, "learning_rate": self.learning_rate,
                "regularization": self.regularization, "seed": self.seed,
                "device": self.device, "edge_weights": self.edge_weights,
                "eval_every": self.eval_every, "patience": self.patience,
                "init_std": self.init_std,
                "prune_kg_leaves": self.prune_kg_leaves, "num_threads": self.num_threads,
                "sampling": self.sampling,
                "fanout": (self.fanout if isinstance(self.fanout, int) else list(self.fanout)),
                "max_full_nnz": self.max_full_nnz, "chunk_rows": self.chunk_rows,
                "pairs": self.pairs}

    def _torch_device(self) -> torch.device:
        """"auto": CUDA when torch sees a GPU, else CPU; anything else as torch spells it."""
        import torch

        if self.device == "auto":
            return torch.device("cuda" if torch.cuda.is_available() else "cpu")
        return torch.device(self.device)

    def _fanouts(self) -> tuple[int, ...]:
        return ((self.fanout,) * self.layers if isinstance(self.fanout, int)
                else tuple(self.fanout))

    def resolve_sampling(self, nnz: int) -> str:
        """"full" or "neighbour" for an adjacency with `nnz` stored entries ("auto": full
        while nnz <= max_full_nnz, where one full product per batch is cheap)."""
        if self.sampling != "auto":
            return self.sampling
        return "full" if nnz <= self.max_full_nnz else "neighbour"

    # ---- training --------------------------------------------------------------------------
    def fit(
        self, user_items: sp.csr_matrix, graph: HeteroData | None = None,
        product_features: np.ndarray | None = None,
        validate: Callable[[np.ndarray, np.ndarray], float] | None = None,
        metric: str = "validation",
    ) -> Self:
        """Train on `user_items` (+ KG edges of `graph`, + `product_features`).

        `user_items` is a users x products CSR matrix, binarised by the caller. Afterwards
        `user_embeddings` and `item_embeddings` hold the final embeddings. With `validate`,
        every `eval_every` epochs (and after the last) the final embeddings are computed and
        `validate(user_embeddings, item_embeddings)` returns a score to maximise, recorded in
        `history` under `metric`; the best epoch's parameters are kept and training stops
        after `patience` evaluations without improvement. The caller supplies the measure
        (the recommender layer's Recall@k), so this layer holds no evaluation code.
        """
        import torch

        matrix = sp.csr_matrix(user_items)
        self.n_users, self.n_items = matrix.shape
        features = self._check_features(product_features)
        threads = torch.get_num_threads()
        if self.num_threads:
            torch.set_num_threads(self.num_threads)
        try:
            self._train(matrix, graph, features, validate, metric)
        finally:
            torch.set_num_threads(threads)
        return self

    def _check_features(self, features: np.ndarray | None) -> np.ndarray | None:
        if features is None:
            self.feature_dim = 0
            return None
        features = np.asarray(features, dtype=np.float32)
        if features.ndim != 2 or features.shape[0] != self.n_items:
            raise ValueError(f"product_features must be (n_products={self.n_items}, d), "
                             f"got {features.shape}")
        self.feature_dim = features.shape[1]
        return features

    def _train(self, matrix: sp.csr_matrix, graph: HeteroData | None,
               features: np.ndarray | None,
               validate: Callable[[np.ndarray, np.ndarray], float] | None,
               metric: str) -> None:
        import torch

        device = self._torch_device()
        if self.seed is not None:
            torch.manual_seed(self.seed)
        rng = np.random.default_rng(self.seed)
        norm, self.offsets = build_adjacency(matrix, graph, self.edge_weights,
                                             self.prune_kg_leaves)
        n_nodes = norm.shape[0]
        self.sampling_used = self.resolve_sampling(norm.nnz)
        norm.sort_indices()
        indptr = torch.as_tensor(norm.indptr.astype(np.int64), device=device)
        indices = torch.as_tensor(norm.indices.astype(np.int64), device=device)
        values = torch.as_tensor(norm.data.astype(np.float32), device=device)
        csr = (indptr, indices, values)
        self.network = _network(n_nodes, self.dim, self.feature_dim,
                                self.init_std).to(device)
        feats = None if features is None else torch.as_tensor(features, device=device)
        embedding = self.network.embedding
        projection = ([] if self.network.projection is None
                      else list(self.network.projection.parameters()))
        if self.sampling_used == "full":
            plan = _full_propagation(norm, self.offsets[PRODUCT_TYPE][1], self.layers, device)
            optimisers = [_adam([embedding.weight, *projection], self.learning_rate, device)]
            sampler = row_adam = None
        else:
            # only the rows a batch touched get gradients and Adam updates (lazy Adam):
            # per-batch work stays proportional to the sampled neighbourhood
            row_adam = _RowAdam(embedding.weight, self.learning_rate)
            optimisers = [_adam(projection, self.learning_rate, device)] if projection else []
            generator = torch.Generator(device=device)
            if self.seed is not None:
                generator.manual_seed(self.seed)
            else:
                generator.seed()
            sampler = NeighbourSampler(indptr, indices, values, self._fanouts(), generator)
            plan = None

        coo = matrix.tocoo()
        users, items = coo.row.astype(np.int64), coo.col.astype(np.int64)
        positive_keys = users * self.n_items + items  # sorted: CSR order is row-major
        first_product = self.offsets[PRODUCT_TYPE][0]
        self.epoch_seconds, self.history, self.best_epoch = [], [], None
        self.epoch_cpu_seconds = []
        self.max_batch_nodes = 0
        best, best_state, stale = -1.0, None, 0
        for epoch in range(1, self.epochs + 1):
            start, start_cpu = time.perf_counter(), time.process_time()
            if self.pairs == "interactions":  # every training pair once, shuffled
                order = rng.permutation(len(users))
                negatives = self._negatives(users, positive_keys, rng)[order]
                epoch_users, epoch_items = users[order], items[order]
            else:
                epoch_users, epoch_items = self._user_pairs(matrix, len(users), rng)
                negatives = self._negatives(epoch_users, positive_keys, rng)
            # one transfer per epoch: (user, positive, negative) node ids in batch order
            triples = torch.as_tensor(np.stack([
                epoch_users, epoch_items + first_product, negatives + first_product]),
                device=device)
            self.network.train()
            total = torch.zeros((), device=device)  # summed on the device: no sync per batch
            for lo in range(0, len(epoch_users), self.batch_size):
                batch = triples[:, lo: lo + self.batch_size]
                for optimiser in optimisers:
                    optimiser.zero_grad()
                if sampler is None:
                    loss = self._full_loss(batch, feats, plan)
                    loss.backward()
                else:
                    loss, nodes, rows = self._sampled_loss(batch, feats, sampler)
                    loss.backward()
                    row_adam.step(nodes, rows.grad)
                for optimiser in optimisers:
                    optimiser.step()
                total += loss.detach() * batch.shape[1]
            if device.type == "cuda":
                torch.cuda.synchronize(device)  # the epoch's kernels, not only their launches
            self.epoch_seconds.append(time.perf_counter() - start)
            self.epoch_cpu_seconds.append(time.process_time() - start_cpu)
            if self.verbose:
                print(f"epoch {epoch}: loss {float(total) / max(len(users), 1):.4f} "
                      f"({self.epoch_seconds[-1]:.2f} s)")
            if validate is None or (epoch % self.eval_every and epoch != self.epochs):
                continue
            self._freeze(csr, feats)
            value = float(validate(self.user_embeddings, self.item_embeddings))
            self.history.append({"epoch": epoch, metric: value})
            if value > best:
                best, stale, self.best_epoch = value, 0, epoch
                best_state = {k: v.detach().clone() for k, v in
                              self.network.state_dict().items()}
            else:
                stale += 1
                if stale >= self.patience:
                    break
        if best_state is not None:
            self.network.load_state_dict(best_state)
        self._freeze(csr, feats)

    def _full_loss(self, batch: torch.Tensor, features: torch.Tensor | None,
                   plan: Propagation) -> torch.Tensor:
        """BPR loss of one batch, propagating the whole graph (exact LightGCN)."""
        self.max_batch_nodes = max(self.max_batch_nodes, plan.sizes[-1])
        final, ego = _propagated_rows().apply(self._ego(features), plan, batch.reshape(-1))
        return self._bpr(final, ego, batch.shape[1])

    def _sampled_loss(
        self, batch: torch.Tensor, features: torch.Tensor | None, sampler: NeighbourSampler,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """BPR loss of one batch over the sampled K-hop neighbourhood of its nodes, the
        neighbourhood's node ids and their id-embedding rows (a leaf: its .grad feeds
        `_RowAdam`)."""
        import torch

        seeds, inverse = torch.unique(batch.reshape(-1), return_inverse=True)
        sample = sampler.sample(seeds)
        self.max_batch_nodes = max(self.max_batch_nodes, sample.sizes[-1])
        rows = _take(self.network.embedding.weight.detach(), sample.nodes).requires_grad_()
        ego = self._with_features(rows, sample.nodes, features)
        final, ego = _propagated_rows().apply(ego, sample.propagation(), inverse)
        return self._bpr(final, ego, batch.shape[1]), sample.nodes, rows

    def _bpr(self, final: torch.Tensor, ego: torch.Tensor, size: int) -> torch.Tensor:
        """softplus(neg - pos) averaged, plus L2 on the batch's layer-0 rows (as LightGCN).

        `final` and `ego` hold the users, then the positives, then the negatives."""
        import torch

        user, positive, negative = final[:size], final[size: 2 * size], final[2 * size:]
        pos = (user * positive).sum(1)
        neg = (user * negative).sum(1)
        l2 = ego.pow(2).sum() / 2
        return (torch.nn.functional.softplus(neg - pos).mean()
                + self.regularization * l2 / size)

    @staticmethod
    def _user_pairs(matrix: sp.csr_matrix, n: int, rng: np.random.Generator
                    ) -> tuple[np.ndarray, np.ndarray]:
        """`n` (user, positive) pairs for `pairs="users"`: a user drawn uniformly among those
        with history, then one of their products (LightGCN's reference sampler), so every
        user weighs alike in the loss, as they do in a per-user metric such as Recall@20;
        `pairs="interactions"` weighs a user by the length of their history instead."""
        degree = np.diff(matrix.indptr)
        active = np.flatnonzero(degree > 0)
        if not len(active):
            return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
        picked = active[rng.integers(0, len(active), size=n)]
        offset = (rng.random(len(picked)) * degree[picked]).astype(np.int64)
        return picked, matrix.indices[matrix.indptr[picked] + offset].astype(np.int64)

    def _negatives(self, users: np.ndarray, positive_keys: np.ndarray,
                   rng: np.random.Generator) -> np.ndarray:
        """One uniform product per interaction, re-drawn while it is one of the user's
        training positives (a few rounds; a user who has rated nearly everything may keep
        a positive, which only wastes that sample)."""
        negatives = rng.integers(0, self.n_items, size=len(users))
        for _ in range(10 if len(positive_keys) else 0):
            keys = users * self.n_items + negatives
            pos = np.minimum(np.searchsorted(positive_keys, keys), len(positive_keys) - 1)
            clash = np.flatnonzero(positive_keys[pos] == keys)
            if not len(clash):
                break
            negatives[clash] = rng.integers(0, self.n_items, size=len(clash))
        return negatives

    def _ego(self, features: torch.Tensor | None) -> torch.Tensor:
        """Layer-0 embeddings of every node: ids, plus projected features on product rows."""
        import torch

        ego = self.network.embedding.weight
        if features is None or self.network.projection is None:
            return ego
        lo, hi = self.offsets[PRODUCT_TYPE]
        projected = self.network.projection(features)
        return torch.cat([ego[:lo], ego[lo:hi] + projected, ego[hi:]])

    def _with_features(self, ego: torch.Tensor, nodes: torch.Tensor,
                       features: torch.Tensor | None) -> torch.Tensor:
        """Layer-0 embeddings of `nodes` (a sampled neighbourhood) from their id rows `ego`."""
        import torch

        if features is None or self.network.projection is None:
            return ego
        lo, hi = self.offsets[PRODUCT_TYPE]
        rows = torch.nonzero((nodes >= lo) & (nodes < hi)).squeeze(1)
        projected = self.network.projection(_take(features, _take(nodes, rows) - lo))
        return ego.index_add(0, rows, projected)

    def _propagate(self, ego: torch.Tensor,
                   csr: tuple[torch.Tensor, torch.Tensor, torch.Tensor]) -> torch.Tensor:
        """Exact mean of layers 0..K without autograd, one block of `chunk_rows` rows of the
        adjacency at a time (per layer), so no product needs more than one block's
        workspace: how final embeddings are computed in both training modes."""
        indptr, indices, values = csr
        n = ego.shape[0]
        blocks = [(lo, min(lo + self.chunk_rows, n),
                   _row_block(indptr, indices, values, lo, min(lo + self.chunk_rows, n), n))
                  for lo in range(0, n, self.chunk_rows)]
        total, layer = ego.clone(), ego
        for _ in range(self.layers):
            following = ego.new_empty(ego.shape)
            for lo, hi, block in blocks:
                _spmm_into(following[lo:hi], block, layer)
            total += following
            layer = following
        return total.mul_(1.0 / (self.layers + 1))

    def _freeze(self, csr: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
                features: torch.Tensor | None) -> None:
        """Compute final user/product embeddings once, as numpy, for scoring."""
        import torch

        self.network.eval()
        with torch.no_grad():
            final = self._propagate(self._ego(features), csr).cpu().numpy()
        self.user_embeddings = final[: self.n_users].copy()
        lo, hi = self.offsets[PRODUCT_TYPE]
        self.item_embeddings = final[lo:hi].copy()

    # ---- new products ----------------------------------------------------------------------
    def embed_new_products(self, features: np.ndarray) -> np.ndarray:
        """Final embeddings for products added after training, from their features alone.

        Exactly what propagation gives a node with no edges and a zero id embedding:
        projection / (K + 1). Score them against `user_embeddings` (dot product).
        """
        import torch

        if self.item_embeddings is None:
            raise RuntimeError("the encoder is not fitted: call fit first")
        if self.network is None or self.network.projection is None:
            raise RuntimeError("the model was fitted without product_features")
        features = np.asarray(features, dtype=np.float32).reshape(-1, self.feature_dim)
        weight = self.network.projection.weight
        with torch.no_grad():
            projected = torch.as_tensor(features, device=weight.device) @ weight.T
        return (projected.cpu().numpy() / (self.layers + 1)).astype(np.float32)

    # ---- persistence -----------------------------------------------------------------------
    def save(self, directory: str | Path, config: dict[str, Any] | None = None,
             extra: dict[str, np.ndarray] | None = None) -> Path:
        """Write `config.json` (hyper-parameters, shapes, node ranges) and `state.pt`
        (parameters and final embeddings, plain tensors: loadable with weights_only).

        `config` replaces `self.config()` in the file (a wrapper's, which adds its own
        settings); `extra` arrays are stored in `state.pt` after the embeddings and come back
        from `load_state`."""
        import torch

        if self.network is None:
            raise RuntimeError("only a trained encoder (one with parameters) can be saved")
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        meta = {"config": self.config() if config is None else config,
                "n_users": self.n_users, "n_items": self.n_items,
                "feature_dim": self.feature_dim, "offsets": self.offsets,
                "epoch_seconds": self.epoch_seconds, "history": self.history,
                "best_epoch": self.best_epoch, "sampling_used": self.sampling_used,
                "max_batch_nodes": self.max_batch_nodes}
        (directory / CONFIG_FILE).write_text(json.dumps(meta, indent=1))
        state = {f"network.{k}": v.detach().cpu() for k, v in
                 self.network.state_dict().items()}
        state["user_embeddings"] = torch.as_tensor(self.user_embeddings)
        state["item_embeddings"] = torch.as_tensor(self.item_embeddings)
        for key, value in (extra or {}).items():
            if key in state or key.startswith("network."):
                raise ValueError(f"extra array {key!r} would overwrite the encoder's own")
            state[key] = torch.as_tensor(value)
        torch.save(state, directory / STATE_FILE)
        return directory

    def load_state(self, directory: str | Path) -> dict[str, np.ndarray]:
        """Restore `save`'s trained parameters, embeddings and training record into this
        encoder (built with the saved hyper-parameters), on its device (CPU where CUDA is
        asked for but absent); returns the `extra` arrays saved beside them."""
        import torch

        directory = Path(directory)
        meta = json.loads((directory / CONFIG_FILE).read_text())
        self.n_users, self.n_items = meta["n_users"], meta["n_items"]
        self.feature_dim = meta["feature_dim"]
        self.offsets = {k: tuple(v) for k, v in meta["offsets"].items()}
        self.epoch_seconds, self.history = meta["epoch_seconds"], meta["history"]
        self.best_epoch = meta["best_epoch"]
        self.sampling_used = meta.get("sampling_used", "full")
        self.max_batch_nodes = meta.get("max_batch_nodes", 0)
        state = torch.load(directory / STATE_FILE, map_location="cpu", weights_only=True)
        n_nodes = max(end for _, end in self.offsets.values())
        self.network = _network(n_nodes, self.dim, self.feature_dim, self.init_std)
        self.network.load_state_dict({k.removeprefix("network."): v for k, v in
                                      state.items() if k.startswith("network.")})
        target = self._torch_device()
        if target.type == "cuda" and not torch.cuda.is_available():
            target = torch.device("cpu")  # a GPU-trained checkpoint opened without a GPU
        self.network.to(target)
        self.user_embeddings = state["user_embeddings"].numpy()
        self.item_embeddings = state["item_embeddings"].numpy()
        return {k: v.numpy() for k, v in state.items() if not k.startswith("network.")
                and k not in ("user_embeddings", "item_embeddings")}
