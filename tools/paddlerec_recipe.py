"""PaddleRec's own ESMM recipe, as PaddleRec runs it: the second baseline of `tools/benchmark.py`
(`paddlerec_train`).

    python tools/paddlerec_recipe.py --data DIR --batch-size 1024 --epochs 1 [--save DIR]

Written afresh (no PaddleRec text) after PaddleRec's `models/multitask/esmm/esmm_reader.py`,
`net.py`, `dygraph_model.py`, `config.yaml` / `config_bigdata.yaml`, `tools/trainer.py` and
`tools/utils/utils_single.py` / `save_load.py`. It imports nothing of this project, so it measures
PaddleRec's approach and not ours:

- reader: an `IterableDataset` reading every file of `--data` line by line in Python: split on
  `,`, click = column 1, buy = column 2, feature tokens from column 4 on (column 3 skipped, as
  PaddleRec does), `field:feasign` split per token, tokens of the 23 fields collected per field,
  each field cut or padded with 0 to `max_len` 3 and turned into its own int64 array; a
  `paddle.io.DataLoader` (no workers, `drop_last=True`) collates batches.
- feeds: every field's batch tensor goes through numpy and back (`[B, max_len]` int64), labels
  likewise (`[B, 1]` int64).
- network: one embedding table (`sparse=True`, `padding_idx=0`, uniform initialiser in
  [-1, 1]), looked up once per field (23 lookups), each summed over its `max_len` ids and
  concatenated ([B, 23 * 12]); two towers 276-256-64-2 with ReLU, weights drawn from
  N(0, 1/fan_in), zero biases; a softmax over two classes per tower; pCTCVR = P(click) *
  P(buy | click), also as a two-class [1 - p, p].
- loss: `log_loss` (epsilon 1e-4) of P(click) against click plus `log_loss` of pCTCVR against
  buy, averaged over the batch. Adam, learning rate 0.001, over every parameter (the table's
  gradient is sparse, Adam is not lazy).
- loop: `paddle.seed(12345)`; per batch `clear_grad`, forward, loss, two `paddle.metric.Auc`
  updates (CTR on the click softmax, CTCVR on the two-class pCTCVR; each a Python loop over the
  batch's rows), `backward`, `step`; every `print_interval` batches (10, config_bigdata.yaml) a
  log line with both AUCs, the loss and the reader / batch costs; after each epoch the AUCs and
  `paddle.save` of the network's and optimizer's state dicts into `SAVE/<epoch>/rec.pdparams`
  and `rec.pdopt`.

Deliberate differences from PaddleRec, none of them in the per-batch work:

- Settings come from command-line flags instead of PaddleRec's YAML, `sys.path` and `importlib`
  loading; CPU only (no GPU, XPU, Fleet or VisualDL branches); no `model_init_path`.
- `--cpu-threads N` sets Paddle's math threads, so that the benchmark compares it with the tools
  at the same thread count; PaddleRec leaves Paddle's default (which is what you get without
  the flag).
- The files of `--data` are read in sorted order (PaddleRec: `os.listdir` order).
- `--sparse-feature-number` defaults to PaddleRec's 737,946 (real Ali-CCP); the benchmark
  passes its data's own table size, the one the zoo's tools are given.
- The tower layers have distinct names, as in PaddleRec's current `net.py` (an earlier version
  registered both towers' layers under the same names, so the CTR tower never reached the
  optimizer).
- One last line reports the epoch loop's rate, which `tools/benchmark.py` reads.
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import sys
import time

import numpy as np
import paddle
import paddle.nn as nn
import paddle.nn.functional as F
from paddle.io import DataLoader, IterableDataset

# The 23 Ali-CCP fields in the order of PaddleRec's esmm_reader.py
FIELDS = (
    "101", "109_14", "110_14", "127_14", "150_14", "121", "122", "124", "125", "126", "127",
    "128", "129", "205", "206", "207", "210", "216", "508", "509", "702", "853", "301",
)  # fmt: skip

log = logging.getLogger("paddlerec_recipe")


class SlotLines(IterableDataset):
    """Yields `[field_0 (max_len,), ..., field_22 (max_len,), [click], [buy]]` int64 arrays per
    line, parsed in Python as PaddleRec's reader does (with its per-field visited flags)."""

    def __init__(self, files: list[str], max_len: int = 3):
        super().__init__()
        self.files = files
        self.max_len = max_len
        self.fields = {name: [False, i] for i, name in enumerate(FIELDS)}

    def __iter__(self):
        for path in self.files:
            with open(path) as f:
                for line in f:
                    columns = line.strip().split(",")
                    click = int(columns[1])
                    buy = int(columns[2])
                    per_field = [(name, []) for name in self.fields]
                    for token in columns[4:]:
                        name, feasign = token.strip().split(":")
                        if name not in self.fields:
                            continue
                        self.fields[name][0] = True
                        per_field[self.fields[name][1]][1].append(int(feasign))
                    arrays = []
                    for name in self.fields:
                        _, i = self.fields[name]
                        self.fields[name][0] = False
                        ids = per_field[i][1]
                        if len(ids) > self.max_len:
                            arrays.append(np.array(ids[: self.max_len]).astype("int64"))
                        else:
                            for _ in range(self.max_len - len(ids)):
                                ids.append(0)
                            arrays.append(np.array(ids).astype("int64"))
                    arrays.append(np.array([click]).astype("int64"))
                    arrays.append(np.array([buy]).astype("int64"))
                    yield arrays


def tower(in_size: int, sizes: list[int]) -> nn.Sequential:
    """Linear layers in_size -> sizes -> 2 with ReLU between, weights ~ N(0, 1/fan_in)."""
    dims = [in_size, *sizes, 2]
    layers = []
    for i in range(len(dims) - 1):
        init = nn.initializer.Normal(std=1.0 / math.sqrt(dims[i]))
        layers.append(
            nn.Linear(dims[i], dims[i + 1], weight_attr=paddle.ParamAttr(initializer=init))
        )
        if i < len(dims) - 2:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers)


class PaddleRecESMM(nn.Layer):
    """PaddleRec's ESMMLayer: 23 per-field lookups of one sparse table, sum pooling, two softmax
    towers. forward(list of 23 [B, max_len] int64) -> (ctr [B, 2], ctr_one [B, 1], cvr [B, 2],
    cvr_one [B, 1], ctcvr [B, 2], ctcvr_one [B, 1])."""

    def __init__(self, table_rows: int, dim: int, n_fields: int, ctr_sizes, cvr_sizes):
        super().__init__()
        self.embedding = nn.Embedding(
            table_rows,
            dim,
            sparse=True,
            padding_idx=0,
            weight_attr=paddle.ParamAttr(initializer=nn.initializer.Uniform()),
        )
        self.ctr_tower = tower(dim * n_fields, ctr_sizes)
        self.cvr_tower = tower(dim * n_fields, cvr_sizes)

    def forward(self, fields):
        pooled = [paddle.sum(self.embedding(ids), axis=1) for ids in fields]  # 23 x [B, D]
        x = paddle.concat(pooled, axis=1)  # [B, 23 * D]
        ctr = F.softmax(self.ctr_tower(x))
        cvr = F.softmax(self.cvr_tower(x))
        ctr_one = paddle.slice(ctr, axes=[1], starts=[1], ends=[2])
        cvr_one = paddle.slice(cvr, axes=[1], starts=[1], ends=[2])
        ctcvr_one = paddle.multiply(ctr_one, cvr_one)
        ctcvr = paddle.concat([1 - ctcvr_one, ctcvr_one], axis=1)
        return ctr, ctr_one, cvr, cvr_one, ctcvr, ctcvr_one


def feeds(batch, max_len: int):
    """PaddleRec's create_feeds: each field and label through numpy and back into a tensor."""
    fields = [paddle.to_tensor(b.numpy().astype("int64").reshape(-1, max_len)) for b in batch[:-2]]
    click = paddle.to_tensor(batch[-2].numpy().astype("int64").reshape(-1, 1))
    buy = paddle.to_tensor(batch[-1].numpy().astype("int64").reshape(-1, 1))
    return fields, click, buy


def esmm_loss(ctr_one, click, ctcvr_one, buy):
    cost = F.log_loss(ctr_one, paddle.cast(click, "float32")) + F.log_loss(
        ctcvr_one, paddle.cast(buy, "float32")
    )
    return paddle.mean(cost)


def train(args) -> float:
    """PaddleRec's dygraph trainer loop; returns the epoch loop's samples/s (last epoch)."""
    paddle.seed(12345)
    place = paddle.set_device("cpu")
    if args.cpu_threads is not None:
        threads = args.cpu_threads or len(os.sched_getaffinity(0))
        paddle.base.core.set_num_threads(threads)
    net = PaddleRecESMM(args.sparse_feature_number, 12, len(FIELDS), [256, 64], [256, 64])
    optimizer = paddle.optimizer.Adam(learning_rate=0.001, parameters=net.parameters())
    files = [os.path.join(args.data, name) for name in sorted(os.listdir(args.data))]
    loader = DataLoader(
        SlotLines(files, args.max_len), batch_size=args.batch_size, places=place, drop_last=True
    )
    rate = 0.0
    for epoch in range(args.epochs):
        net.train()
        aucs = {"auc_ctr": paddle.metric.Auc("ROC"), "auc_ctcvr": paddle.metric.Auc("ROC")}
        epoch_start = time.time()
        reader_cost = run_cost = 0.0
        interval_samples = epoch_samples = 0
        reader_start = time.time()
        loss = None
        for batch_id, batch in enumerate(loader()):
            reader_cost += time.time() - reader_start
            optimizer.clear_grad()
            run_start = time.time()
            fields, click, buy = feeds(batch, args.max_len)
            ctr, ctr_one, _, _, ctcvr, ctcvr_one = net(fields)
            loss = esmm_loss(ctr_one, click, ctcvr_one, buy)
            aucs["auc_ctr"].update(preds=ctr.numpy(), labels=click.numpy())
            aucs["auc_ctcvr"].update(preds=ctcvr.numpy(), labels=buy.numpy())
            loss.backward()
            optimizer.step()
            run_cost += time.time() - run_start
            interval_samples += len(batch[0])
            epoch_samples += len(batch[0])
            if batch_id % args.print_interval == 0:
                metrics = "".join(f"{k}:{m.accumulate():.6f}, " for k, m in aucs.items())
                n = args.print_interval
                log.info(
                    f"epoch: {epoch}, batch_id: {batch_id}, {metrics}"
                    f"loss:{str(loss.numpy()).strip('[]')}, "
                    f"avg_reader_cost: {reader_cost / n:.5f} sec, "
                    f"avg_batch_cost: {(reader_cost + run_cost) / n:.5f} sec, "
                    f"avg_samples: {interval_samples / n:.5f}, "
                    f"ips: {interval_samples / (reader_cost + run_cost):.5f} ins/s"
                )
                reader_cost = run_cost = 0.0
                interval_samples = 0
            reader_start = time.time()
        seconds = time.time() - epoch_start
        if loss is None:
            raise SystemExit(f"no full batch of {args.batch_size} rows in {args.data}")
        metrics = "".join(f"{k}: {m.accumulate():.6f}," for k, m in aucs.items())
        loss_value = float(loss.numpy().reshape(-1)[0])
        log.info(
            f"epoch: {epoch} done, {metrics}loss:{loss_value:.6f}, epoch time: {seconds:.2f} s"
        )
        save_dir = os.path.join(args.save, str(epoch))
        os.makedirs(save_dir, exist_ok=True)
        paddle.save(net.state_dict(), os.path.join(save_dir, "rec.pdparams"))
        paddle.save(optimizer.state_dict(), os.path.join(save_dir, "rec.pdopt"))
        log.info(f"Already save model in {save_dir}")
        rate = epoch_samples / seconds
        # the line tools/benchmark.py reads (the epoch loop, reading included, saving excluded)
        print(
            f"epoch {epoch} done in {seconds:.1f}s ({rate:,.0f} samples/s); "
            f"{epoch_samples:,} samples, loss {loss_value:.6f}",
            flush=True,
        )
    return rate


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", required=True, help="folder of slot files (all are read)")
    parser.add_argument("--batch-size", type=int, default=1024, help="config_bigdata.yaml: 1024")
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--save", default="output_model_esmm", help="checkpoints: SAVE/<epoch>/")
    parser.add_argument("--print-interval", type=int, default=10, help="config_bigdata.yaml: 10")
    parser.add_argument("--max-len", type=int, default=3, help="ids kept per field (reader: 3)")
    parser.add_argument(
        "--sparse-feature-number",
        type=int,
        default=737946,
        help="embedding rows (PaddleRec's config: 737,946); every feasign must be below it",
    )
    parser.add_argument(
        "--cpu-threads",
        type=int,
        help="Paddle's math threads, 0 = all usable cores (default: Paddle's, as PaddleRec)",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(format="%(asctime)s - %(levelname)s - %(message)s", level=logging.INFO)
    train(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
