"""ESMM (Ma et al., SIGIR 2018) and the paper's baselines: one network definition, used by the
dygraph and static engines.

    ids [B, width] ─► embedding ─► per-field pooling ─► feature groups ─┬─► CTR tower ─► pctr
                     (sum / mean)     (each group: concat, own DNN)     └─► CVR tower ─► pcvr
    pctcvr = pctr * pcvr
    loss   = w_ctr · BCE(pctr, click) + w_cvr · BCE(pctcvr, click * buy)   (all impressions)
             + l2_regularization · ½Σ‖dense kernels‖² + embedding_regularization · ½Σ_batch ‖pooled embeddings‖²

The CVR tower is never fitted directly: only pCTCVR sees buy labels, over the entire
impression space, which removes the sample-selection bias of training CVR on clicks alone.

`hyper_parameters.variant` selects the paper's comparison (Table 2), all with the same outputs:

- `esmm`: the above.
- `esmm_ns`: the same, but the CTR and CVR sides have separate embedding tables (and group DNNs).
- `base`: a CVR network fitted to `buy` on clicked impressions only (the naive baseline), and an
  independent CTR network (own embedding) fitted to `click` on all impressions; pctcvr = pctr * pcvr.
- `division`: independent CTR and CTCVR networks (own embeddings) fitted to `click` and
  `click * buy` on all impressions; pcvr = clip(pctcvr / pctr, 0, 1).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import paddle
import paddle.nn as nn
import paddle.nn.functional as F

from paddle_rec_zoo.errors import UserError
from paddle_rec_zoo.slot_parser import FieldLayout
from paddle_rec_zoo.sparse import ROW_OPTIMIZERS, RowOptimizer, SparseEmbedding

# PaddleRec's field order for Ali-CCP (user, user histories, item, crosses, context).
ALI_CCP_FIELDS = [
    "101", "109_14", "110_14", "127_14", "150_14", "121", "122", "124", "125", "126", "127",
    "128", "129", "205", "206", "207", "210", "216", "508", "509", "702", "853", "301",
]  # fmt: skip

LABEL_NAMES = ("click", "buy")  # the reader's label columns, in order
VARIANTS = ("esmm", "esmm_ns", "base", "division")
POOLINGS = ("sum", "mean")
DEFAULT_TOWER = [256, 64]
_EPS = 1e-7

OPTIMIZERS = {"adam": "Adam", "adamw": "AdamW", "sgd": "SGD", "adagrad": "Adagrad"}
DECAYS = ("exponential", "cosine")


# --------------------------------------------------------------------------- config
@dataclass
class ScheduleConfig:
    """Learning rate per training step: linear warm-up, then decay towards `decay_rate`·lr."""

    decay: str = "exponential"  # exponential: lr·decay_rate^(t/decay_steps); cosine: to lr·decay_rate at decay_steps
    decay_steps: int = 1000
    decay_rate: float = 0.5
    warmup_steps: int = 0  # lr rises linearly from lr/warmup_steps to lr over these steps

    def validate(self, where: str):
        if self.decay not in DECAYS:
            raise UserError(f"{where}.decay: choose one of {', '.join(DECAYS)}, not {self.decay!r}")
        if self.decay_steps < 1:
            raise UserError(f"{where}.decay_steps must be at least 1")
        if not 0 < self.decay_rate <= 1:
            raise UserError(f"{where}.decay_rate must be in (0, 1]")
        if self.warmup_steps < 0:
            raise UserError(f"{where}.warmup_steps must be non-negative")


@dataclass
class OptimizerConfig:
    class_: str = "Adam"  # Adam, AdamW, SGD or Adagrad (spelled `class:` in YAML)
    learning_rate: float = 0.001
    schedule: ScheduleConfig | None = None  # None = constant learning rate

    def validate(self, where: str):
        if self.class_.lower() not in OPTIMIZERS:
            raise UserError(
                f"{where}.class: unknown optimizer {self.class_!r}; "
                f"choose one of {', '.join(sorted(OPTIMIZERS))}"
            )
        if self.learning_rate <= 0:
            raise UserError(f"{where}.learning_rate must be positive")


@dataclass
class EmbeddingOptimizerConfig:
    """How the embedding tables learn (`hyper_parameters.embedding_optimizer`).

    A row-wise rule updates only the rows a batch looks up, with per-row state (paddle_rec_zoo/sparse.py):
    a step costs the same at 300k or 30M rows. `dense` makes the tables ordinary parameters of
    `optimizer` (a dense gradient and update of every row on every step: the cost grows with
    the table).
    """

    class_: str = "lazy_adam"  # lazy_adam, rowwise_adagrad, adagrad, sgd, or dense
    learning_rate: float | None = None  # None = optimizer.learning_rate, following its schedule
    schedule: ScheduleConfig | None = None  # with learning_rate: its own schedule; None = constant
    beta1: float = 0.9  # lazy_adam
    beta2: float = 0.999  # lazy_adam
    epsilon: float = 1.0e-8
    initial_accumulator_value: float = 0.0  # adagrad, rowwise_adagrad

    @property
    def row_wise(self) -> bool:
        return self.class_ != "dense"

    def validate(self, where: str):
        choices = (*ROW_OPTIMIZERS, "dense")
        if self.class_ not in choices:
            raise UserError(
                f"{where}.class: unknown embedding optimizer {self.class_!r}; choose one of "
                f"{', '.join(choices)}"
            )
        if self.learning_rate is not None and self.learning_rate <= 0:
            raise UserError(f"{where}.learning_rate must be positive")
        if self.schedule is not None and self.learning_rate is None:
            raise UserError(
                f"{where}.schedule needs {where}.learning_rate (without it the tables follow "
                "optimizer.learning_rate and its schedule)"
            )
        if not self.row_wise and (self.learning_rate is not None or self.schedule is not None):
            raise UserError(
                f"{where}: class dense trains the tables with optimizer (its learning rate and "
                "schedule); remove learning_rate/schedule here"
            )
        for key in ("beta1", "beta2"):
            if not 0 <= getattr(self, key) < 1:
                raise UserError(f"{where}.{key} must be in [0, 1)")
        if self.epsilon <= 0:
            raise UserError(f"{where}.epsilon must be positive")
        if self.initial_accumulator_value < 0:
            raise UserError(f"{where}.initial_accumulator_value must be non-negative")


@dataclass
class FieldOptions:
    """Per-field overrides of `max_len` and `pooling`."""

    max_len: int | None = None
    pooling: str | None = None


@dataclass
class FeatureGroup:
    """Fields whose pooled embeddings are concatenated and passed through one DNN."""

    name: str
    fields: list[str]
    hidden_units: list[int] = field(default_factory=list)  # [] = the concatenation itself
    dropout: float = 0.0


@dataclass
class TowerConfig:
    """EasyRec's `ctr_tower` / `cvr_tower`: label, MLP, loss weight, reported metrics."""

    label_name: str = ""  # "" = click for the CTR tower, buy for the CVR tower
    hidden_units: list[int] | None = None  # None = [256, 64] (or the *_fc_sizes shorthand)
    weight: float = 1.0  # loss weight (CVR tower: of the CTCVR loss; `base`: of the CVR loss)
    dropout: float = 0.0
    metrics: list[str] = field(default_factory=lambda: list(TOWER_METRICS))


TOWER_METRICS = ("auc", "logloss", "calibration")


@dataclass
class HyperParameters:
    """The `hyper_parameters:` section of an ESMM config."""

    variant: str = "esmm"  # esmm, esmm_ns, base or division (see the module docstring)
    sparse_feature_number: int = 737946  # embedding rows; every feasign must be below it
    hash_ids: bool = False  # fold feasigns >= sparse_feature_number into the table, no error
    sparse_feature_dim: int = 12
    fields: list[str] = field(default_factory=lambda: list(ALI_CCP_FIELDS))
    max_len: int = 3  # feasigns kept per field and line (the first ones)
    pooling: str = "sum"  # sum or mean of a field's embeddings
    field_options: dict[str, FieldOptions] = field(default_factory=dict)
    feature_groups: list[FeatureGroup] = field(default_factory=list)  # [] = one group, no DNN
    ctr_tower: TowerConfig = field(default_factory=TowerConfig)
    cvr_tower: TowerConfig = field(default_factory=TowerConfig)
    ctr_fc_sizes: list[int] | None = None  # PaddleRec shorthand for ctr_tower.hidden_units
    cvr_fc_sizes: list[int] | None = None  # PaddleRec shorthand for cvr_tower.hidden_units
    embedding_init_std: float = 0.01  # N(0, std); PaddleRec's U(-1, 1) overfits badly
    l2_regularization: float = 0.0  # λ·½Σw² over the kernels of every dense layer
    embedding_regularization: float = 0.0  # λ·½Σx² over the batch's pooled embeddings
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    embedding_optimizer: EmbeddingOptimizerConfig = field(default_factory=EmbeddingOptimizerConfig)

    def validate(self, where: str):
        if self.variant not in VARIANTS:
            raise UserError(
                f"{where}.variant: choose one of {', '.join(VARIANTS)}, not {self.variant!r}"
            )
        if self.sparse_feature_number < 2:
            raise UserError(f"{where}.sparse_feature_number must be at least 2 (0 is padding)")
        for key in ("sparse_feature_dim", "max_len"):
            if getattr(self, key) < 1:
                raise UserError(f"{where}.{key} must be at least 1")
        if not self.fields:
            raise UserError(f"{where}.fields is empty")
        for key in ("embedding_init_std", "l2_regularization", "embedding_regularization"):
            if getattr(self, key) < 0:
                raise UserError(f"{where}.{key} must be non-negative")
        if self.pooling not in POOLINGS:
            raise UserError(f"{where}.pooling: choose sum or mean, not {self.pooling!r}")
        for name, opt in self.field_options.items():
            key = f"{where}.field_options.{name}"
            if name not in self.fields:
                raise UserError(f"{key}: {name!r} is not in {where}.fields")
            if opt.max_len is not None and opt.max_len < 1:
                raise UserError(f"{key}.max_len must be at least 1")
            if opt.pooling is not None and opt.pooling not in POOLINGS:
                raise UserError(f"{key}.pooling: choose sum or mean, not {opt.pooling!r}")
        self._validate_groups(where)
        for tower, shorthand in (("ctr_tower", "ctr_fc_sizes"), ("cvr_tower", "cvr_fc_sizes")):
            cfg: TowerConfig = getattr(self, tower)
            short = getattr(self, shorthand)
            if short is not None and cfg.hidden_units is not None:
                raise UserError(
                    f"{where}.{shorthand} and {where}.{tower}.hidden_units both set the "
                    f"{tower.split('_')[0].upper()} tower; keep one (set {shorthand}: null to "
                    "drop an inherited shorthand)"
                )
            units = cfg.hidden_units if cfg.hidden_units is not None else short
            if units is not None and any(n < 1 for n in units):
                bad = f"{tower}.hidden_units" if cfg.hidden_units is not None else shorthand
                raise UserError(f"{where}.{bad}: layer sizes must be positive")
            if cfg.label_name and cfg.label_name not in LABEL_NAMES:
                raise UserError(
                    f"{where}.{tower}.label_name: {cfg.label_name!r} is not a label column of the "
                    f"reader ({', '.join(LABEL_NAMES)})"
                )
            if cfg.weight < 0:
                raise UserError(f"{where}.{tower}.weight must be non-negative")
            if not 0 <= cfg.dropout < 1:
                raise UserError(f"{where}.{tower}.dropout must be in [0, 1)")
            for m in cfg.metrics:
                if m not in TOWER_METRICS:
                    raise UserError(
                        f"{where}.{tower}.metrics: unknown metric {m!r}; "
                        f"choose from {', '.join(TOWER_METRICS)}"
                    )
        if self.label("ctr") == self.label("cvr"):
            raise UserError(
                f"{where}.ctr_tower.label_name and {where}.cvr_tower.label_name are both "
                f"{self.label('ctr')!r}"
            )
        self.layout()  # checks field names

    def _validate_groups(self, where: str):
        owner: dict[str, str] = {}
        names = set()
        for i, group in enumerate(self.feature_groups):
            key = f"{where}.feature_groups[{i}]"
            if not group.name:
                raise UserError(f"{key}.name is empty")
            if group.name in names:
                raise UserError(f"{key}.name: group {group.name!r} is defined twice")
            names.add(group.name)
            if not group.fields:
                raise UserError(f"{key} ({group.name}): fields is empty")
            for name in group.fields:
                if name not in self.fields:
                    raise UserError(
                        f"{key}.fields: {name!r} is not in {where}.fields (unknown field)"
                    )
                if name in owner:
                    raise UserError(
                        f"{key}.fields: {name!r} is already in group {owner[name]!r}; "
                        "a field belongs to one group"
                    )
                owner[name] = group.name
            if any(n < 1 for n in group.hidden_units):
                raise UserError(f"{key}.hidden_units: layer sizes must be positive")
            if not 0 <= group.dropout < 1:
                raise UserError(f"{key}.dropout must be in [0, 1)")
        if self.feature_groups:
            unused = [f for f in self.fields if f not in owner]
            if unused:
                raise UserError(
                    f"{where}.feature_groups: fields {unused} are read but in no group; add them "
                    f"to a group or remove them from {where}.fields"
                )

    # ---- resolved values
    def field_max_len(self, name: str) -> int:
        opt = self.field_options.get(name)
        return opt.max_len if opt is not None and opt.max_len is not None else self.max_len

    def field_pooling(self, name: str) -> str:
        opt = self.field_options.get(name)
        return opt.pooling if opt is not None and opt.pooling is not None else self.pooling

    def layout(self) -> FieldLayout:
        return FieldLayout(tuple(self.fields), tuple(self.field_max_len(f) for f in self.fields))

    def tower_units(self, tower: str) -> list[int]:
        cfg = getattr(self, f"{tower}_tower")
        short = getattr(self, f"{tower}_fc_sizes")
        if cfg.hidden_units is not None:
            return list(cfg.hidden_units)
        return list(short) if short is not None else list(DEFAULT_TOWER)

    def label(self, tower: str) -> str:
        cfg = getattr(self, f"{tower}_tower")
        return cfg.label_name or {"ctr": "click", "cvr": "buy"}[tower]

    def groups(self) -> list[FeatureGroup]:
        return self.feature_groups or [FeatureGroup("all", list(self.fields))]


# --------------------------------------------------------------------------- layers
def dnn(in_size: int, sizes: list[int], dropout: float = 0.0) -> nn.Sequential:
    """Linear+ReLU(+Dropout) layers of `sizes` (no output layer); empty `sizes` = identity."""
    layers: list[nn.Layer] = []
    for size in sizes:
        layers += [nn.Linear(in_size, size), nn.ReLU()]
        if dropout > 0:
            layers.append(nn.Dropout(dropout))
        in_size = size
    return nn.Sequential(*layers)


def mlp(in_size: int, sizes: list[int], dropout: float = 0.0) -> nn.Sequential:
    """`dnn(sizes)` then one output logit."""
    net = dnn(in_size, sizes, dropout)
    net.add_sublayer(str(len(net)), nn.Linear(sizes[-1] if sizes else in_size, 1))
    return net


class FeatureInput(nn.Layer):
    """ids [B, width] -> features [B, out_size]: embedding, per-field pooling, group DNNs."""

    def __init__(self, hp: HyperParameters):
        super().__init__()
        self.layout = hp.layout()
        self.dim = hp.sparse_feature_dim
        self.embedding = SparseEmbedding(
            hp.sparse_feature_number,
            hp.sparse_feature_dim,
            hp.embedding_init_std,
            row_wise=hp.embedding_optimizer.row_wise,
        )
        self.mean_fields = [hp.field_pooling(f) == "mean" for f in self.layout.names]
        index = {name: i for i, name in enumerate(self.layout.names)}
        self.group_fields = [[index[f] for f in g.fields] for g in hp.groups()]
        self.group_dnns = nn.LayerList(
            [dnn(len(g.fields) * self.dim, g.hidden_units, g.dropout) for g in hp.groups()]
        )
        self.out_size = sum(
            g.hidden_units[-1] if g.hidden_units else len(g.fields) * self.dim for g in hp.groups()
        )

    def pooled(self, ids):
        """[B, width] ids -> ([B, F, D] pooled embeddings, [B, width, D] looked-up embeddings)."""
        emb = self.embedding(ids)  # [B, width, D]; padding id 0 looks up zeros
        n_fields, lens = len(self.layout.names), self.layout.max_lens
        if len(set(lens)) == 1:
            pooled = emb.reshape([-1, n_fields, lens[0], self.dim]).sum(axis=2)  # [B, F, D]
        else:
            pooled = paddle.stack(
                [part.sum(axis=1) for part in paddle.split(emb, list(lens), axis=1)], axis=1
            )
        if any(self.mean_fields):
            present = (ids != 0).astype(emb.dtype)  # [B, width]
            if len(set(lens)) == 1:
                counts = present.reshape([-1, n_fields, lens[0]]).sum(axis=2)  # [B, F]
            else:
                parts = paddle.split(present, list(lens), axis=1)
                counts = paddle.concat([p.sum(axis=1, keepdim=True) for p in parts], axis=1)
            mean = paddle.assign(np.array(self.mean_fields, dtype="float32"))  # [F]
            # sum fields divide by 1, mean fields by their count of non-padding ids (at least 1)
            divisor = 1.0 + mean * (paddle.clip(counts, min=1.0) - 1.0)  # [B, F]
            pooled = pooled / divisor.unsqueeze(-1)
        return pooled, emb

    def forward(self, ids):
        """Returns (features [B, out_size], pooled embeddings [B, F, D])."""
        pooled, _ = self.pooled(ids)
        n_fields = len(self.layout.names)
        if len(self.group_fields) == 1 and self.group_fields[0] == list(range(n_fields)):
            x = pooled.reshape([-1, n_fields * self.dim])
            return self.group_dnns[0](x), pooled
        per_field = paddle.unbind(pooled, axis=1)  # F x [B, D]
        outs = []
        for fields, group_dnn in zip(self.group_fields, self.group_dnns, strict=True):
            x = paddle.concat([per_field[i] for i in fields], axis=1)  # [B, |g| * D]
            outs.append(group_dnn(x))
        return paddle.concat(outs, axis=1), pooled


class ESMMLayer(nn.Layer):
    """ids [B, width] int64 -> dict of pctr, pcvr, pctcvr [B, 1] and the towers' logits [B, 1].

    Parameters: `inputs.0` (the shared input, or the CTR side's), `inputs.1` (the CVR/CTCVR
    side's, for every variant but `esmm`), `ctr_tower`, and `cvr_tower` (`ctcvr_tower` for
    `division`).
    """

    def __init__(self, hp: HyperParameters):
        super().__init__()
        self.hp = hp
        self.variant = hp.variant
        self.layout = hp.layout()
        n_inputs = 1 if hp.variant == "esmm" else 2
        self.inputs = nn.LayerList([FeatureInput(hp) for _ in range(n_inputs)])
        in_size = self.inputs[0].out_size
        self.ctr_tower = mlp(in_size, hp.tower_units("ctr"), hp.ctr_tower.dropout)
        second = mlp(in_size, hp.tower_units("cvr"), hp.cvr_tower.dropout)
        if hp.variant == "division":
            self.ctcvr_tower = second
        else:
            self.cvr_tower = second

    @property
    def embedding(self):
        """The shared embedding table (the CTR side's when the sides have their own)."""
        return self.inputs[0].embedding

    def pooled_features(self, ids):
        """[B, width] ids -> [B, F * D] pooled embeddings of the (first) input."""
        pooled, _ = self.inputs[0].pooled(ids)
        return pooled.reshape([-1, len(self.layout.names) * self.inputs[0].dim])

    def forward(self, ids):
        ctr_x, ctr_emb = self.inputs[0](ids)
        cvr_x, cvr_emb = (ctr_x, None) if len(self.inputs) == 1 else self.inputs[1](ids)
        ctr_logit = self.ctr_tower(ctr_x)
        pctr = F.sigmoid(ctr_logit)
        out = {"ctr_logit": ctr_logit}
        if self.variant == "division":
            ctcvr_logit = self.ctcvr_tower(cvr_x)
            pctcvr = F.sigmoid(ctcvr_logit)
            pcvr = paddle.clip(pctcvr / paddle.clip(pctr, min=_EPS), 0.0, 1.0)
            out["ctcvr_logit"] = ctcvr_logit
        else:
            cvr_logit = self.cvr_tower(cvr_x)
            pcvr = F.sigmoid(cvr_logit)
            pctcvr = pctr * pcvr
            out["cvr_logit"] = cvr_logit
        out.update(pctr=pctr, pcvr=pcvr, pctcvr=pctcvr)
        if self.training and self.hp.embedding_regularization > 0:
            # EasyRec's: an L2 regulariser (½·λ·Σx²) on the embedding features of the batch
            sq = (ctr_emb * ctr_emb).sum()
            if cvr_emb is not None:
                sq = sq + (cvr_emb * cvr_emb).sum()
            out["embedding_reg"] = 0.5 * self.hp.embedding_regularization * sq
        return out

    def dense_l2(self):
        """½·Σ‖W‖² over the kernels (not biases) of every dense layer (TensorFlow's l2_loss)."""
        total = None
        for layer in self.sublayers():
            if isinstance(layer, nn.Linear):
                term = 0.5 * (layer.weight * layer.weight).sum()
                total = term if total is None else total + term
        return total

    def loss(self, outputs: dict, labels: dict):
        """Total training loss and its parts; `labels` maps label names to [B, 1] float32."""
        hp = self.hp
        click, buy = labels[hp.label("ctr")], labels[hp.label("cvr")]
        ctr_loss = F.binary_cross_entropy_with_logits(outputs["ctr_logit"], click)
        parts = {"loss_ctr": ctr_loss}
        if self.variant == "base":
            cvr_loss = clicked_bce(outputs["cvr_logit"], buy, click)
            parts["loss_cvr"] = cvr_loss
        elif self.variant == "division":
            cvr_loss = F.binary_cross_entropy_with_logits(outputs["ctcvr_logit"], click * buy)
            parts["loss_ctcvr"] = cvr_loss
        else:
            cvr_loss = ctcvr_bce(outputs["ctr_logit"], outputs["cvr_logit"], click * buy)
            parts["loss_ctcvr"] = cvr_loss
        total = hp.ctr_tower.weight * ctr_loss + hp.cvr_tower.weight * cvr_loss
        if hp.l2_regularization > 0:
            parts["l2_reg"] = hp.l2_regularization * self.dense_l2()
            total = total + parts["l2_reg"]
        if "embedding_reg" in outputs:
            parts["embedding_reg"] = outputs["embedding_reg"]
            total = total + outputs["embedding_reg"]
        return total, parts


def ctcvr_bce(ctr_logit, cvr_logit, ctcvr):
    """Batch-mean BCE(σ(a)·σ(b), ctcvr), from the logits: log pctcvr = log σ(a) + log σ(b) is
    exact where the product would underflow, and only 1 - pctcvr needs a floor."""
    log_p = F.log_sigmoid(ctr_logit) + F.log_sigmoid(cvr_logit)
    log_not_p = paddle.log(paddle.clip(1.0 - paddle.exp(log_p), min=_EPS))
    return -(ctcvr * log_p + (1.0 - ctcvr) * log_not_p).mean()


def clicked_bce(cvr_logit, buy, click):
    """BCE(σ(cvr_logit), buy) averaged over the clicked rows only (0 for a batch without clicks)."""
    per_row = F.binary_cross_entropy_with_logits(cvr_logit, buy, reduction="none")
    return (per_row * click).sum() / paddle.clip(click.sum(), min=1.0)


def esmm_loss(outputs: dict, click, buy):
    """Batch-mean BCE(pctr, click) + BCE(pctcvr, click*buy); labels are [B, 1] float32."""
    ctr_loss = F.binary_cross_entropy_with_logits(outputs["ctr_logit"], click)
    ctcvr_loss = ctcvr_bce(outputs["ctr_logit"], outputs["cvr_logit"], click * buy)
    return ctr_loss + ctcvr_loss, {"loss_ctr": ctr_loss, "loss_ctcvr": ctcvr_loss}


# --------------------------------------------------------------------------- optimizer
class StepSchedule(paddle.optimizer.lr.LRScheduler):
    """Warm-up then exponential or cosine decay, advanced by one step per read.

    Both engines read the learning rate exactly once per training step (the dygraph optimizer in
    `step()`, the static executor on every run of the train program), so the schedule counts
    its own steps and needs no hook in the training loop (the static engine undoes the read
    made while building the program). The embedding optimizer reads its own copy once per step.
    """

    def __init__(self, learning_rate: float, cfg: ScheduleConfig):
        self.cfg = cfg
        super().__init__(learning_rate)

    def lr_at(self, t: int) -> float:
        c = self.cfg
        if t < c.warmup_steps:
            return self.base_lr * (t + 1) / c.warmup_steps
        t -= c.warmup_steps
        if c.decay == "exponential":
            return self.base_lr * c.decay_rate ** (t / c.decay_steps)
        frac = min(t / c.decay_steps, 1.0)
        low = self.base_lr * c.decay_rate
        return low + (self.base_lr - low) * 0.5 * (1.0 + math.cos(math.pi * frac))

    def get_lr(self) -> float:
        return self.lr_at(max(self.last_epoch, 0))

    def __call__(self) -> float:
        lr = self.lr_at(max(self.last_epoch, 0))
        self.last_epoch += 1
        self.last_lr = self.lr_at(self.last_epoch)
        return lr


def create_optimizer(hp: HyperParameters, parameters=None):
    """The optimizer of the dense parameters (dygraph: pass the parameters; static: leave None).

    Parameters that take no gradient (row-wise embedding tables) are left out: they belong to
    the `create_embedding_optimizer`, and the dense optimizer must not hold state for them.
    """
    cls = getattr(paddle.optimizer, OPTIMIZERS[hp.optimizer.class_.lower()])
    if parameters is not None:
        parameters = [p for p in parameters if not p.stop_gradient]
    return cls(learning_rate=_learning_rate(hp.optimizer), parameters=parameters)


def _learning_rate(cfg):
    """A constant, or a `StepSchedule` when `cfg.schedule` is set."""
    if cfg.schedule is None:
        return cfg.learning_rate
    return StepSchedule(cfg.learning_rate, cfg.schedule)


def create_embedding_optimizer(hp: HyperParameters) -> RowOptimizer | None:
    """The row-wise optimizer of the embedding tables; None when they are dense parameters."""
    cfg = hp.embedding_optimizer
    if not cfg.row_wise:
        return None
    # its own learning rate and schedule, or the same values as the dense optimizer, step by step
    lr = _learning_rate(cfg if cfg.learning_rate is not None else hp.optimizer)
    schedule = lr if callable(lr) else (lambda: lr)
    return RowOptimizer(
        cfg.class_, schedule, cfg.beta1, cfg.beta2, cfg.epsilon, cfg.initial_accumulator_value
    )
