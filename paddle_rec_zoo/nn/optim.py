"""Optimizers of every model: the dense parameters' (Adam, AdamW, SGD, Adagrad, with an optional
warm-up and decay schedule) and the embedding tables' row-wise rules (`paddle_rec_zoo.nn.sparse`).

Config: `hyper_parameters.optimizer` and `hyper_parameters.embedding_optimizer`
(doc/config.md).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import paddle

from paddle_rec_zoo.errors import UserError
from paddle_rec_zoo.nn.sparse import ROW_OPTIMIZERS, RowOptimizer

OPTIMIZERS = {"adam": "Adam", "adamw": "AdamW", "sgd": "SGD", "adagrad": "Adagrad"}
DECAYS = ("exponential", "cosine")


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

    def restart(self):
        """Back to step 0: the next read gives the first step's learning rate again."""
        self.last_epoch = 0
        self.last_lr = self.lr_at(0)


def initial_accumulator(optimizer, kind: str) -> float:
    """The value every element of a fresh accumulator `kind` of a dense Paddle `optimizer` holds:
    Adam's and AdamW's beta powers start at the betas, Adagrad's `moment` at its initial value,
    every other accumulator at zero."""
    if kind.startswith("beta1_pow"):
        return float(optimizer._beta1)
    if kind.startswith("beta2_pow"):
        return float(optimizer._beta2)
    if kind == "moment":
        return float(getattr(optimizer, "initial_accumulator_value", 0.0))
    return 0.0


def create_optimizer(hp, parameters=None):
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


def create_embedding_optimizer(hp) -> RowOptimizer | None:
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
