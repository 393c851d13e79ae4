"""A seeded synthetic shop with Complete Journey's shape, written in the generic format.

Why: the cost-growth benchmark (`benchmarks/scale.py`) needs shops of 1M, 3M, 10M ... events
whose structure stresses the product the way a real merchant's does, and no public data set
comes in those sizes with a catalog graph. Complete Journey (../shared/data/README.md:
2,469 households, 92,339 products, ~1.47M transaction lines over two years, a department >
commodity > sub-commodity tree, brand, manufacturer and package size) gives the shape:

- item popularity is Zipf-like (rank ** -ZIPF_EXPONENT), the item ids shuffled so rank and id
  are unrelated; user activity is long-tailed (log-normal, every user at least 2 events);
- each user prefers one department: LOCAL_SHARE of their events fall in it (popularity-
  weighted within it), the rest follow global popularity, so collaborative sources have
  structure to find;
- the catalog is a tree: departments > commodities > sub-commodities; a product sits in one
  sub-commodity, has a brand (Zipf-shared), a manufacturer (brands grouped under
  manufacturers), a package size and a price; its title is 2-4 words from a seeded vocabulary
  plus its sub-commodity's name, so lexical search has words to match;
- events are 80% purchase, 15% view, 5% cart, timestamps uniform over two years from
  2023-01-01 UTC.

Sizes grow with the event count `n` (the CJ-like ratios, chosen and stated here):
products = n / ITEMS_PER (25), users = n / USERS_PER (400), sub-commodities = products / 40,
commodities = sub-commodities / 8, brands = products / 30, manufacturers = brands / 4.
At 1M that is 40,000 products and 2,500 users (CJ: 92k products, 2.5k households at 1.47M).

Same `(n, seed)` -> byte-identical files (`tests/test_scale_generator.py` checks it).
"""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd

ITEMS_PER = 25  # events per product
USERS_PER = 400  # events per user
ZIPF_EXPONENT = 1.0
LOCAL_SHARE = 0.6  # share of a user's events inside their preferred department
DEPARTMENTS = 30
KINDS = np.array(["purchase", "view", "cart"])
KIND_P = np.array([0.80, 0.15, 0.05])
START_TS = 1_672_531_200  # 2023-01-01T00:00:00Z
SPAN_S = 2 * 365 * 86_400
SIZES = ["1 OZ", "6 OZ", "8 OZ", "12 OZ", "16 OZ", "32 OZ", "1 LB", "2 LB", "5 LB", "1 GA",
         "6 PK", "12 PK", "24 PK", "1 CT", "10 CT", "100 CT", "250 ML", "500 ML", "1 L", "2 L"]
AGES = ["19-24", "25-34", "35-44", "45-54", "55-64", "65+"]
INCOMES = ["Under 15K", "15-24K", "25-34K", "35-49K", "50-74K", "75-99K", "100-149K", "150K+"]
SYLLABLES = ["ka", "lo", "mi", "ra", "te", "su", "no", "ve", "di", "pa", "zo", "ri", "ben",
             "tor", "lin", "mar", "sel", "qua", "fen", "gro", "har", "jul", "kes", "wym"]


@dataclass(frozen=True)
class ShopShape:
    """How many of each thing a shop of `interactions` events has."""

    interactions: int
    products: int
    users: int
    departments: int
    commodities: int
    sub_commodities: int
    brands: int
    manufacturers: int

    @classmethod
    def for_size(cls, interactions: int) -> ShopShape:
        if interactions < 100:
            raise ValueError(f"interactions must be >= 100, got {interactions}")
        products = max(20, interactions // ITEMS_PER)
        subs = max(DEPARTMENTS, products // 40)
        commodities = max(DEPARTMENTS, subs // 8)
        brands = max(5, products // 30)
        return cls(interactions=interactions, products=products,
                   users=max(5, interactions // USERS_PER), departments=DEPARTMENTS,
                   commodities=commodities, sub_commodities=subs, brands=brands,
                   manufacturers=max(2, brands // 4))


def _words(rng: np.random.Generator, count: int, prefix: str = "") -> list[str]:
    """`count` distinct pseudo-words of 2-3 syllables (seeded), e.g. 'karate', 'lomiben'."""
    out: list[str] = []
    seen: set[str] = set()
    while len(out) < count:
        parts = rng.choice(len(SYLLABLES), size=int(rng.integers(2, 4)))
        word = prefix + "".join(SYLLABLES[i] for i in parts)
        if word not in seen:
            seen.add(word)
            out.append(word)
    return out


def vocabulary(seed: int = 0, size: int = 3000) -> list[str]:
    """The title vocabulary of a shop generated with `seed` (search queries draw from it)."""
    return _words(np.random.default_rng([seed, 7]), size)


def _zipf_weights(count: int, rng: np.random.Generator, exponent: float = ZIPF_EXPONENT
                  ) -> np.ndarray:
    """Zipf-like weights over `count` things, the ranks shuffled."""
    weights = np.arange(1, count + 1, dtype=np.float64) ** -exponent
    rng.shuffle(weights)
    return weights / weights.sum()


def generate(directory: str | Path, interactions: int, seed: int = 0) -> dict:
    """Write products.csv, users.csv and interactions.csv for a shop of `interactions` events.

    Returns the shape and the written counts (also saved as shape.json beside the files).
    """
    shape = ShopShape.for_size(int(interactions))
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    vocab = np.array(vocabulary(seed))

    # ---- catalog tree
    dept_names = [w.capitalize() for w in _words(rng, shape.departments)]
    commodity_dept = np.concatenate([np.arange(shape.departments), rng.integers(
        0, shape.departments, shape.commodities - shape.departments)])
    commodity_names = [w.upper() for w in _words(rng, shape.commodities)]
    sub_commodity = np.concatenate([np.arange(shape.commodities), rng.integers(
        0, shape.commodities, shape.sub_commodities - shape.commodities)])
    sub_names = _words(rng, shape.sub_commodities)
    sub_paths = np.array([f"{dept_names[commodity_dept[c]]} > {commodity_names[c]} > "
                          f"{sub_names[s]}" for s, c in enumerate(sub_commodity)], dtype=object)
    sub_dept = commodity_dept[sub_commodity]
    brand_names = np.array([w.capitalize() for w in _words(rng, shape.brands, "b")])
    brand_maker = rng.integers(0, shape.manufacturers, shape.brands)
    maker_names = np.array([w.upper() + " CO" for w in _words(rng, shape.manufacturers, "m")])

    # ---- products
    n_items = shape.products
    item_sub = rng.integers(0, shape.sub_commodities, n_items)
    item_brand = rng.choice(shape.brands, size=n_items, p=_zipf_weights(shape.brands, rng))
    title_len = rng.integers(2, 5, n_items)
    title_words = rng.choice(len(vocab), size=(n_items, 4), p=_zipf_weights(len(vocab), rng))
    titles = [" ".join(vocab[title_words[i, :title_len[i]]]) + " " + sub_names[item_sub[i]]
              for i in range(n_items)]
    product_ids = np.array([f"p{i:07d}" for i in range(n_items)], dtype=object)
    products = pd.DataFrame({
        "id": product_ids,
        "title": titles,
        "brand": brand_names[item_brand],
        "category_path": sub_paths[item_sub],
        "price": np.round(np.exp(rng.normal(1.2, 0.8, n_items)), 2),
        "manufacturer": maker_names[brand_maker[item_brand]],
        "size": np.array(SIZES)[rng.integers(0, len(SIZES), n_items)],
    })
    products.to_csv(out / "products.csv", index=False)

    # ---- users
    n_users = shape.users
    users = pd.DataFrame({
        "id": [f"u{i:07d}" for i in range(n_users)],
        "age": np.array(AGES)[rng.integers(0, len(AGES), n_users)],
        "income": np.array(INCOMES)[rng.integers(0, len(INCOMES), n_users)],
    })
    users.to_csv(out / "users.csv", index=False)

    # ---- events: long-tailed user activity summing to n
    n = shape.interactions
    activity = rng.lognormal(0.0, 1.2, n_users)
    counts = 2 + np.floor(activity / activity.sum() * (n - 2 * n_users)).astype(np.int64)
    short = n - int(counts.sum())  # >= 0 (floors); hand the rest out by activity
    np.add.at(counts, rng.choice(n_users, size=short, p=activity / activity.sum()), 1)
    user_of = np.repeat(np.arange(n_users), counts)
    popularity = _zipf_weights(n_items, rng)
    # items ordered by department; cumulative popularity in that order, so a draw inside one
    # department is a searchsorted inside its slice of the cumulative mass
    item_dept = sub_dept[item_sub]
    order = np.argsort(item_dept, kind="stable")
    cum = np.cumsum(popularity[order])
    dept_end = np.searchsorted(item_dept[order], np.arange(shape.departments), side="right")
    dept_hi = np.where(dept_end > 0, cum[np.maximum(dept_end - 1, 0)], 0.0)
    dept_lo = np.concatenate([[0.0], dept_hi[:-1]])
    dept_mass = (dept_hi - dept_lo) / (dept_hi - dept_lo).sum()
    user_dept = rng.choice(shape.departments, size=n_users, p=dept_mass)
    local = rng.random(n) < LOCAL_SHARE
    u = rng.random(n)
    d = user_dept[user_of]
    target = np.where(local, dept_lo[d] + u * (dept_hi[d] - dept_lo[d]), u * cum[-1])
    item_of = order[np.minimum(np.searchsorted(cum, target, side="right"), n_items - 1)]
    events = pd.DataFrame({
        "user_id": users["id"].to_numpy(dtype=object)[user_of],
        "product_id": product_ids[item_of],
        "kind": KINDS[rng.choice(len(KINDS), size=n, p=KIND_P)],
        "timestamp": START_TS + rng.integers(0, SPAN_S, n),
    })
    events.to_csv(out / "interactions.csv", index=False)
    info = {"seed": seed, **asdict(shape),
            "distinct_pairs": int(pd.MultiIndex.from_arrays([user_of, item_of]).nunique()),
            "items_with_events": int(np.unique(item_of).size)}
    (out / "shape.json").write_text(json.dumps(info, indent=1))
    return info


def parse_size(text: str) -> int:
    """'1M' -> 1_000_000, '300k' -> 300_000, '2500' -> 2500."""
    value = text.strip().lower()
    scale = {"k": 1_000, "m": 1_000_000, "g": 1_000_000_000}.get(value[-1:], 1)
    number = value[:-1] if scale > 1 else value
    try:
        size = int(float(number) * scale)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a size: {text!r} (e.g. 1M, 300k)") from None
    if size < 100:
        raise argparse.ArgumentTypeError(f"size must be >= 100 events, got {text!r}")
    return size


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("directory", type=Path)
    parser.add_argument("--size", type=parse_size, default=parse_size("1M"))
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    print(json.dumps(generate(args.directory, args.size, args.seed)))


if __name__ == "__main__":
    main()
