"""The batch contract between data and models: how a row's feasigns are laid out (`FieldLayout`),
the columns a reader yields (`Columns`) and the mini-batch an engine consumes (`Batch`).

Readers and formats (`paddle_rec_zoo.data`) produce these; engines and models read them. This
module imports no parser, format or framework.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np

from paddle_rec_zoo.errors import UserError

# A field name is 1 to 8 bytes of UTF-8 without ':', ',' or control characters: the slot format
# separates fields with ',' and a field from its feasign with ':' and ends a line with '\n', the
# raw Ali-CCP format separates with \x01-\x03, and the slot parser packs a name into one uint64.
# Every reader and the raw converter check names with `field_name_problem`, so the converter
# cannot write a data set the reader refuses.
MAX_FIELD_BYTES = 8


def field_name_problem(name: str) -> str | None:
    """Why `name` cannot be a field name, or None if it can."""
    fits = 0 < len(name.encode()) <= MAX_FIELD_BYTES
    if not fits or any(c in ":," or ord(c) < 32 or c == "\x7f" for c in name):
        return (
            f"field name {name!r}: 1 to {MAX_FIELD_BYTES} bytes, no ':', ',' or control characters"
        )
    return None


@dataclass(frozen=True)
class FieldLayout:
    """Where each field's feasigns sit in a row of the `ids` matrix.

    Field f occupies columns `offsets[f] : offsets[f] + max_lens[f]`; `width` is the total.
    """

    names: tuple[str, ...]
    max_lens: tuple[int, ...]

    def __post_init__(self):
        if len(self.names) != len(self.max_lens):
            raise ValueError("one max_len per field")
        if len(set(self.names)) != len(self.names):
            dup = sorted({n for n in self.names if self.names.count(n) > 1})
            raise UserError(f"field list names {dup} more than once")
        for name, n in zip(self.names, self.max_lens, strict=True):
            if n < 1:
                raise UserError(f"field {name}: max_len must be at least 1, got {n}")
            problem = field_name_problem(name)
            if problem:
                raise UserError(problem)

    @property
    def offsets(self) -> tuple[int, ...]:
        return tuple(int(x) for x in np.cumsum((0,) + self.max_lens[:-1]))

    @property
    def width(self) -> int:
        return int(sum(self.max_lens))

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


@dataclass
class Columns:
    """Parsed rows: `ids` [N, width] int64, `labels` [N, k] int8, `sample_id` [N] int64 (the
    order of `Batch`)."""

    ids: np.ndarray
    labels: np.ndarray
    sample_id: np.ndarray

    def __len__(self) -> int:
        return len(self.sample_id)

    def take(self, mask_or_index) -> Columns:
        return Columns(
            self.ids[mask_or_index], self.labels[mask_or_index], self.sample_id[mask_or_index]
        )

    @staticmethod
    def concat(parts: list[Columns], n_labels: int, width: int) -> Columns:
        if not parts:
            return Columns(
                np.zeros((0, width)), np.zeros((0, n_labels), np.int8), np.zeros(0, np.int64)
            )
        return Columns(
            np.concatenate([p.ids for p in parts]),
            np.concatenate([p.labels for p in parts]),
            np.concatenate([p.sample_id for p in parts]),
        )


class Batch(NamedTuple):
    """One mini-batch: `ids` [B, width] int64, `labels` [B, k] float32, `sample_id` [B] int64
    (the order of `Columns`);
    `rows`: for training row-wise tables, the ids as rows of the batch's own
    (`paddle_rec_zoo.nn.sparse.RowBatch`), prepared with the batch when the engine asks."""

    ids: np.ndarray
    labels: np.ndarray
    sample_id: np.ndarray
    rows: Any = None
