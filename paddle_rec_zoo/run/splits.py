"""The train or test data a config names (`runner.<split>_data_dir`), loaded and summarised."""

from __future__ import annotations

import time

from paddle_rec_zoo.data.cache import default_cache_dir
from paddle_rec_zoo.data.dataset import Dataset, list_data_files
from paddle_rec_zoo.errors import UserError
from paddle_rec_zoo.report.progress import log


def load_dataset(config, reader, split: str) -> Dataset:
    """`split` ("train" or "test") through `reader`, cached as the runner asks; never empty."""
    key = f"runner.{split}_data_dir"
    folder = getattr(config.runner, f"{split}_data_dir")
    files = list_data_files(folder, key)
    cache_dir = None
    if config.runner.use_cache:
        cache_dir = config.runner.cache_dir or default_cache_dir()
    start = time.time()
    dataset = Dataset.load(files, reader, cache_dir)
    if len(dataset) == 0:
        raise UserError(f"{key}: {folder} holds no data rows")
    log(
        f"{split} data: {len(dataset):,} rows from {len(files)} file(s) in {folder} "
        f"({time.time() - start:.1f}s)"
    )
    for line in dataset.stats.summary():
        log(f"{split} data: {line}")
    return dataset
