"""Interfaces: the `shopgraph` command line (and, later, the HTTP app)."""
