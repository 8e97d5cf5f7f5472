"""The Ali-CCP data set: its fields, its label columns and its reader (`runner.train_reader_path:
ali_ccp`), of PaddleRec's slot format, `sample_id,click,buy,field:feasign,...`, or of the
converter's binary data set (a folder with `dataset.json`, see `paddle_rec_zoo.data.binary_data`).

Every token from the 4th column on of the form `field:feasign` is a feature (PaddleRec's own
reader skips the 4th column, which in its published sample holds a real feature); tokens without
`:` and fields outside `hyper_parameters.fields` are ignored. click=0,buy=1 rows are noise in
Ali-CCP (a purchase without a click) and are dropped and counted.
"""

from __future__ import annotations

from paddle_rec_zoo.data.binary_data import BinarySplit
from paddle_rec_zoo.data.slot_parser import BadLines, SlotParser

# The 23 Ali-CCP fields in PaddleRec's order (user id, user histories, user profile, item,
# crosses, context; their meanings: doc/data.md, "The 23 fields"): the default
# `hyper_parameters.fields` of every model. The raw converter numbers feasigns in an order
# derived from this one (`datasets/ali-ccp/vocabulary.py: feasign_order`).
FIELDS = (
    "101", "109_14", "110_14", "127_14", "150_14", "121", "122", "124", "125", "126", "127",
    "128", "129", "205", "206", "207", "210", "216", "508", "509", "702", "853", "301",
)  # fmt: skip
# The user-profile fields, with the number of values each takes in the real data, and the
# user-history fields in the order they appear on a raw line (the synthetic generator and the
# converter benchmark's fixture draw from these).
PROFILE_CARDINALITY = {
    "121": 97, "122": 13, "124": 2, "125": 7, "126": 3, "127": 3, "128": 2, "129": 4,
}  # fmt: skip
PROFILE_FIELDS = tuple(PROFILE_CARDINALITY)
HISTORY_FIELDS = ("150_14", "127_14", "109_14", "110_14")
# The raw Tianchi files (data set 408) of each split: its impressions (skeleton) and its users'
# common features, as the converter reads them and the synthetic generator writes them.
RAW_SPLITS = ("train", "test")
RAW_SKELETON = "sample_skeleton_{}.csv"
RAW_COMMON = "common_features_{}.csv"
RAW_FILES = tuple(name.format(s) for name in (RAW_SKELETON, RAW_COMMON) for s in RAW_SPLITS)
LABELS = ("click", "buy")  # the label columns of a line, in order
NOISE = "click=0,buy=1 rows (a buy without a click is noise in Ali-CCP)"


class Reader:
    """Turns one data file into `Columns` chunks; the data layer caches and batches them."""

    label_names = LABELS
    # `read_file` takes a byte range, so the data layer may parse one file in several processes
    supports_ranges = True

    def __init__(self, config):
        hp = config.hyper_parameters
        self.layout = hp.layout()
        self.sparse_feature_number = hp.sparse_feature_number
        self.hash_ids = hp.hash_ids
        self.parser = SlotParser(
            self.layout,
            self.label_names,
            id_limit=hp.sparse_feature_number,
            hash_ids=hp.hash_ids,
            skip_bad=config.runner.skip_bad_lines,
        )

    def cache_key(self) -> dict:
        """Everything that changes what `read_file` returns."""
        return {
            "reader": "ali-ccp-slot/1",
            "layout": self.layout.to_dict(),
            "sparse_feature_number": self.sparse_feature_number,
            "hash_ids": self.hash_ids,
        }

    def open_binary(self, path: str) -> BinarySplit:
        """The binary data set in folder `path` (the converter's default output), for this
        reader's fields: its rows hold the ids the slot text of the same data would give."""
        return BinarySplit(
            path,
            self.layout,
            self.label_names,
            id_limit=self.sparse_feature_number,
            hash_ids=self.hash_ids,
        )

    def max_id(self) -> int:
        return self.sparse_feature_number - 1

    def read_file(self, path: str, start: int = 0, end: int | None = None):
        """Yield `(Columns, info)` per chunk of the lines that start in bytes [start, end) of
        `path` (by default all of it); `info` holds the counts so far for this range."""
        bad = BadLines()
        rows = noise = 0
        for cols in self.parser.parse_file(path, bad=bad, start=start, end=end):
            is_noise = (cols.labels[:, 0] == 0) & (cols.labels[:, 1] == 1)
            if is_noise.any():
                noise += int(is_noise.sum())
                cols = cols.take(~is_noise)
            rows += len(cols)
            info = {
                "rows": rows,
                "bad_lines": bad.count,
                "bad_examples": bad.examples,
                "filtered": {NOISE: noise},
            }
            yield cols, info
