"""Retrieval and ranking: vector index, ALS, graph-aware retrieval, hybrid blend, search.

Built in the recommender and search issues on top of `encoders` and `kg`.
"""
