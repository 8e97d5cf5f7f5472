"""Config keys PaddleRec's own configs carry that are not ours: each is honoured or explained.

A user coming from PaddleRec copies its `config.yaml` beside ours. Our strict loader would stop at
the first key it does not know, with a "did you mean" hint pointing at some unrelated key of ours.
Instead, every key PaddleRec documents is one of:

- honoured: a real key of ours with the same meaning (`runner.infer_reader_path`,
  `runner.model_init_path`, `runner.use_inference`, ...: see `RunnerConfig`), or checked against
  ours (`hyper_parameters.num_field` must equal the length of `hyper_parameters.fields`);
- accepted with one logged line saying it has no effect here and why (`NO_EFFECT`).

Any other unknown key is still an error, so a typo in one of our keys is caught.
"""

from __future__ import annotations

from paddle_rec_zoo.errors import UserError

_PS = (
    "parameter-server training does not work on the pinned Paddle (doc/distributed.md); "
    "data-parallel training is runner.use_fleet"
)

# dotted key -> why it does nothing here (printed once per run)
NO_EFFECT = {
    "runner.use_auc": "AUCs are always computed: auc_ctr, auc_cvr (clicked impressions), auc_ctcvr",
    "runner.auc_num": "each AUC is named (auc_ctr, auc_cvr, auc_ctcvr), not counted",
    "runner.save_inference_feed_varnames": (
        "the exported inference model's one input is named ids (doc/inference.md)"
    ),
    "runner.save_inference_fetch_varnames": (
        "the exported inference model's outputs are named pctr, pcvr, pctcvr (doc/inference.md)"
    ),
    "runner.reader_type": (
        "there is one data path: parsed once into a memory-mapped cache, batched in a background "
        "thread"
    ),
    "runner.pipe_command": "the reader module (runner.train_reader_path) parses the files itself",
    "runner.thread_num": (
        "data is parsed once into a cache, then memory-mapped; math threads are runner.cpu_threads"
    ),
    "runner.sync_mode": _PS,
    "runner.split_file_list": "with runner.use_fleet every rank reads its own share of the rows",
    "runner.dataset_debug": "malformed lines are reported with file and line (doc/reliability.md)",
    "runner.use_xpu": "this zoo runs on the CPU or a CUDA GPU (runner.use_gpu)",
    "runner.use_npu": "this zoo runs on the CPU or a CUDA GPU (runner.use_gpu)",
    "hyper_parameters.optimizer.strategy": _PS,
}
CHECKED = ("hyper_parameters.num_field",)
KNOWN = frozenset(NO_EFFECT) | frozenset(CHECKED)


def extract(data: dict) -> tuple[dict, list[str], dict]:
    """Remove PaddleRec-only keys from a config dict.

    Returns (the dict without them, one note per key that has no effect, {dotted key: value}
    of the keys `check` verifies once the config is built).
    """
    notes, checked = [], {}

    def walk(node: dict, prefix: str) -> dict:
        out = {}
        for key, value in node.items():
            dotted = f"{prefix}{key}"
            if dotted in NO_EFFECT:
                notes.append(f"{dotted} (a PaddleRec key) has no effect here: {NO_EFFECT[dotted]}")
            elif dotted in CHECKED:
                checked[dotted] = value
            elif isinstance(value, dict) and any(k.startswith(f"{dotted}.") for k in KNOWN):
                out[key] = walk(value, f"{dotted}.")
            else:
                out[key] = value
        return out

    return walk(data, ""), notes, checked


def check(config, checked: dict):
    """Verify the honoured-by-checking keys against the built config."""
    if "hyper_parameters.num_field" in checked:
        value = checked["hyper_parameters.num_field"]
        fields = getattr(config.hyper_parameters, "fields", None)
        if fields is None:
            config.notes.append(
                "hyper_parameters.num_field (a PaddleRec key) has no effect here: this model has "
                "no field list to check it against"
            )
        elif isinstance(value, bool) or not isinstance(value, int) or value != len(fields):
            raise UserError(
                f"hyper_parameters.num_field is {value!r} but hyper_parameters.fields lists "
                f"{len(fields)} fields; make them agree or drop num_field (it is derived from "
                "fields here)"
            )
