"""Representation learning: text, image, joint text-image space, graph (GNN), fusion.

Built in the encoders and recommender issues; `kg.export` provides the graph snapshot they
learn from.
"""
