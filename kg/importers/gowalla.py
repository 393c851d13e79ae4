"""Gowalla check-ins as split by LightGCN: `train.txt` / `test.txt`, one line per user.

Each line is ``user item item ...`` (whitespace-separated, ids already remapped to 0..n-1);
the split is the published one, so it is kept, not recomputed. Mapping:
- user -> User, item (a location) -> Product, ids as the decimal strings of the files;
- each (user, item) -> one INTERACTED {kind: "view", weight: 1, count: 1,
  split: "train" | "test"}. A check-in is implicit feedback of the weakest kind, hence
  "view"; the files carry no timestamps or counts, hence weight 1 and no `ts`;
- when `user_list.txt` / `item_list.txt` (``org_id remap_id``) are present, each node also
  gets `org_id`, its id in the original Gowalla dump.

The relationship key is (user, item, kind), so one pair cannot be in both files: such a pair
is a DataError rather than a silent merge that would move a test interaction into training.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from kg.importers.base import ImportResult, require_file, shared_data_dir
from kg.schema import INTERACTED, ORIGIN_FILE, ORIGIN_LINE, PRODUCT, USER, DataError, GraphBatch

DATASET = "gowalla"
SPLITS = ("train", "test")
KIND = "view"


def default_dir() -> Path:
    """Where the shared copy of the data set lives."""
    return shared_data_dir() / "gowalla"


@dataclass
class UserItemLists:
    """One `user item item ...` file as (user, item, line) rows, plus users listed bare."""

    path: Path
    pairs: pd.DataFrame  # int64 columns user, item, line; file order
    users: np.ndarray  # every user with a line, in file order (some may list no items)
    repeated: int  # items repeated within a line (merged)


def _bad_token(path: Path, number: int, fields: list[str]) -> DataError:
    for position, token in enumerate(fields):
        if not (token.isascii() and token.isdigit()):
            field = "user_id" if position == 0 else "item_id"
            return DataError(f"not a non-negative integer id: {token!r} (token {position + 1})",
                             file=str(path), line=number, field=field)
    return DataError("unreadable line", file=str(path), line=number)  # pragma: no cover


def read_user_item_lists(path: Path, progress: bool = False) -> UserItemLists:
    """Parse a LightGCN-format file; DataError (file, line, field) on a bad id or a user
    listed twice. Items repeated within one line are merged and counted."""
    require_file(path)
    with open(path, encoding="utf-8") as handle:
        lines = handle.read().splitlines()
    users: list[int] = []
    user_col: list[np.ndarray] = []
    item_col: list[np.ndarray] = []
    line_col: list[np.ndarray] = []
    first_line: dict[int, int] = {}
    repeated = 0
    for number, line in enumerate(
        tqdm(lines, desc=f"{DATASET}: read {path.name}", unit=" users", disable=not progress),
        start=1,
    ):
        fields = line.split()
        if not fields:
            continue  # blank line
        if not all(t.isascii() and t.isdigit() for t in fields):
            raise _bad_token(path, number, fields)
        ids = np.array(fields, dtype=np.int64)
        user = int(ids[0])
        if user in first_line:
            raise DataError(f"user {user} already listed on line {first_line[user]}",
                            file=str(path), line=number, field="user_id")
        first_line[user] = number
        users.append(user)
        items = ids[1:]
        unique, first = np.unique(items, return_index=True)
        if len(unique) < len(items):
            repeated += len(items) - len(unique)
            items = items[np.sort(first)]
        user_col.append(np.full(len(items), user, dtype=np.int64))
        item_col.append(items)
        line_col.append(np.full(len(items), number, dtype=np.int64))

    def cat(parts: list[np.ndarray]) -> np.ndarray:
        return np.concatenate(parts) if parts else np.empty(0, dtype=np.int64)

    pairs = pd.DataFrame({"user": cat(user_col), "item": cat(item_col), "line": cat(line_col)})
    return UserItemLists(path, pairs, np.asarray(users, dtype=np.int64), repeated)


def _org_ids(path: Path) -> pd.DataFrame | None:
    """`remap_id -> org_id` from `user_list.txt` / `item_list.txt`, if the file is there."""
    if not path.is_file():
        return None
    frame = pd.read_csv(path, sep=r"\s+", dtype=str)
    if list(frame.columns) != ["org_id", "remap_id"]:
        raise DataError(f"expected header 'org_id remap_id', found {list(frame.columns)}",
                        file=str(path), line=1)
    bad = ~frame["remap_id"].str.fullmatch(r"\d+") | frame["org_id"].isna()
    if bad.any():
        row = int(bad.to_numpy().argmax())
        raise DataError(f"bad row {frame.iloc[row].tolist()}", file=str(path), line=row + 2,
                        field="remap_id")
    dup = frame["remap_id"].duplicated()
    if dup.any():
        row = int(dup.to_numpy().argmax())
        raise DataError("duplicate remap_id", file=str(path), line=row + 2, field="remap_id")
    return frame.rename(columns={"remap_id": "id"})[["id", "org_id"]]


def build(data_dir: Path | None = None, progress: bool = False) -> ImportResult:
    """Read the train and test files into Users, Products and INTERACTED {split} rows;
    raises DataError (file, line, field) on input it cannot use."""
    data_dir = Path(data_dir) if data_dir is not None else default_dir()
    parts = {split: read_user_item_lists(data_dir / f"{split}.txt", progress)
             for split in SPLITS}
    train, test = parts["train"].pairs, parts["test"].pairs
    overlap = test.merge(train[["user", "item"]], on=["user", "item"])
    if len(overlap):
        row = overlap.iloc[0]
        raise DataError(
            f"user {row['user']} item {row['item']} is also in train.txt ({len(overlap)} such "
            "pairs): one (user, item) pair cannot be in both splits",
            file=str(parts["test"].path), line=int(row["line"]), field="item_id")

    batch = GraphBatch()
    notes: list[str] = []
    users = pd.Series(np.unique(np.concatenate([p.users for p in parts.values()])))
    items = pd.Series(np.unique(np.concatenate([p.pairs["item"] for p in parts.values()])))
    user_nodes = pd.DataFrame({"id": users.astype(str)})
    item_nodes = pd.DataFrame({"id": items.astype(str)})
    for nodes, name in ((user_nodes, "user_list.txt"), (item_nodes, "item_list.txt")):
        org = _org_ids(data_dir / name)
        if org is not None:
            nodes["org_id"] = nodes["id"].map(org.set_index("id")["org_id"])
            missing = int(nodes["org_id"].isna().sum())
            if missing:
                notes.append(f"{name}: {missing} id(s) without an org_id")
    batch.add_nodes(USER, user_nodes)
    batch.add_nodes(PRODUCT, item_nodes)
    for split, part in parts.items():
        pairs = part.pairs
        batch.add_rels(INTERACTED, pd.DataFrame({
            "source": pairs["user"].astype(str), "target": pairs["item"].astype(str),
            "kind": KIND, "weight": 1.0, "count": 1, "split": split,
            ORIGIN_FILE: part.path.name, ORIGIN_LINE: pairs["line"].to_numpy(),
        }))
        if part.repeated:
            notes.append(f"{split}.txt: {part.repeated} item(s) repeated within a user's line "
                         "merged")
        bare = len(part.users) - pairs["user"].nunique()
        if bare:
            notes.append(f"{split}.txt: {bare} user line(s) without items")
    stats = {"users": len(users), "items": len(items),
             "train_rows": len(train), "test_rows": len(test)}
    notes.append(f"read {stats['users']} users, {stats['items']} items, "
                 f"{stats['train_rows']} train and {stats['test_rows']} test interactions "
                 "(LightGCN split kept as the relationships' `split`)")
    return ImportResult(dataset=DATASET, batch=batch, notes=notes, stats=stats)
