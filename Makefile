# Two entry points for a new user: `make demo` and `make test`. Both create .venv first.
PYTHON ?= python3.11
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: install demo test lint clean

$(STAMP): pyproject.toml
	@command -v $(PYTHON) >/dev/null || { echo "need $(PYTHON) (set PYTHON=...)"; exit 1; }
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --upgrade pip
	$(BIN)/pip install -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

# demo: load Complete Journey, train the recommender, serve the HTTP API (Ctrl-C stops it).
# Training skips the content vectors (search is lexical: BM25 + graph, built in seconds) and
# the GNN, whose epoch over Complete Journey
# takes about 4 min on a CPU: measured on a shared 2-core machine, the load took 12 s and the
# training (ALS, co-purchase, graph paths, popularity) 4 min 9 s, 1.4 GB peak memory.
# `shopgraph train` without --no-gnn trains the full hybrid.
demo: $(STAMP)
	$(BIN)/shopgraph load completejourney
	$(BIN)/shopgraph stats
	$(BIN)/shopgraph train --no-content --no-gnn
	$(BIN)/shopgraph serve

lint: $(STAMP)
	$(BIN)/ruff check .

test: lint
	$(BIN)/python -m pytest

clean:
	rm -rf $(VENV) workspace .pytest_cache
