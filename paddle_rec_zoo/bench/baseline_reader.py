"""The baseline input pipeline of `tools/benchmark.py`: PaddleRec's way of reading Ali-CCP.

Modelled on PaddleRec's `models/multitask/esmm/esmm_reader.py` (written afresh, not copied): an
`IterableDataset` that reads each file line by line in Python, splits the line, collects each
field's feasigns in a per-field list, cuts or pads every list to `max_len` with 0, and yields one
small numpy array per field plus the two labels; `paddle.io.DataLoader` collates them into
batches of tensors. Like PaddleRec it skips the 4th column (`features[4:]`). It exists only so
the benchmark can measure the speed-ups against PaddleRec's approach in the same run, on the same
machine, without PaddleRec installed.
"""

from __future__ import annotations

import numpy as np
import paddle
from paddle.io import DataLoader, IterableDataset


class LineByLineDataset(IterableDataset):
    """Yields `[field_0 ids (max_len,), ..., field_F-1 ids, [click], [buy]]` per line."""

    def __init__(self, files: list[str], fields: list[str], max_len: int):
        super().__init__()
        self.files = list(files)
        self.fields = list(fields)
        self.max_len = max_len
        self.field_index = {name: i for i, name in enumerate(self.fields)}

    def __iter__(self):
        for path in self.files:
            with open(path) as f:
                for line in f:
                    features = line.strip().split(",")
                    click = int(features[1])
                    buy = int(features[2])
                    per_field = [[] for _ in self.fields]
                    for token in features[4:]:
                        field, feasign = token.strip().split(":")
                        index = self.field_index.get(field)
                        if index is None:
                            continue
                        per_field[index].append(int(feasign))
                    out = []
                    for ids in per_field:
                        if len(ids) > self.max_len:
                            ids = ids[: self.max_len]
                        else:
                            ids = ids + [0] * (self.max_len - len(ids))
                        out.append(np.array(ids, dtype=np.int64))
                    out.append(np.array([click], dtype=np.int64))
                    out.append(np.array([buy], dtype=np.int64))
                    yield out


def loader(files: list[str], fields: list[str], max_len: int, batch_size: int) -> DataLoader:
    """PaddleRec's `create_data_loader`: a DataLoader over the line-by-line dataset."""
    dataset = LineByLineDataset(files, fields, max_len)
    return DataLoader(dataset, batch_size=batch_size, drop_last=False, num_workers=0)


def feeds(batch: list, n_fields: int):
    """PaddleRec's `create_feeds`, adapted to the one `ids` input of our network:
    per-field [B, max_len] tensors -> ids [B, F * max_len]; each label column (the line's, in
    its order) -> float32 [B, 1]."""
    ids = paddle.concat(batch[:n_fields], axis=1)
    labels = [paddle.cast(column, "float32") for column in batch[n_fields:]]
    return ids, labels
