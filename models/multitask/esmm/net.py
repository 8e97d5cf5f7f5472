"""ESMM (Ma et al., SIGIR 2018) and the paper's baselines: one network definition, used by the
dygraph and static engines.

    ids [B, width] ─► features (embedding, pooling, groups) ─┬─► CTR tower ─► pctr
                     paddle_rec_zoo.nn.features.FeatureInput      └─► CVR tower ─► pcvr
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

What every model of the zoo shares (features, towers, regularisation, optimizers, metrics)
lives in the `paddle_rec_zoo` package; this file holds only what the paper adds.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from paddle_rec_zoo import (
    FeatureInput,
    MultiTaskHyperParameters,
    MultiTaskModel,
    UserError,
    division_outputs,
    entire_space_outputs,
    mlp,
)

VARIANTS = ("esmm", "esmm_ns", "base", "division")


@dataclass
class HyperParameters(MultiTaskHyperParameters):
    """The `hyper_parameters:` section of an ESMM config."""

    VARIANTS: ClassVar[tuple[str, ...]] = VARIANTS  # tools/experiment.py --variants
    variant: str = "esmm"  # esmm, esmm_ns, base or division (see the module docstring)

    def validate(self, where: str):
        if self.variant not in VARIANTS:
            raise UserError(
                f"{where}.variant: choose one of {', '.join(VARIANTS)}, not {self.variant!r}"
            )
        super().validate(where)


class ESMMLayer(MultiTaskModel):
    """ids [B, width] int64 -> dict of pctr, pcvr, pctcvr [B, 1] and the towers' logits [B, 1].

    Parameters: `input` (the shared input, or the CTR side's: `input` in every model of the
    zoo), `cvr_input` (the CVR/CTCVR side's, for every variant but `esmm`), `ctr_tower`, and
    `cvr_tower` (`ctcvr_tower` for `division`).
    """

    hyper_parameters_class = HyperParameters
    renamed_state: ClassVar[dict[str, str]] = {"inputs.0.": "input.", "inputs.1.": "cvr_input."}

    def __init__(self, hp: HyperParameters):
        super().__init__(hp)
        self.variant = hp.variant
        self.input = FeatureInput(hp)
        self.cvr_input = None if hp.variant == "esmm" else FeatureInput(hp)
        in_size = self.input.out_size
        self.ctr_tower = mlp(in_size, hp.tower_units("ctr"), hp.ctr_tower.dropout)
        second = mlp(in_size, hp.tower_units("cvr"), hp.cvr_tower.dropout)
        if hp.variant == "division":
            self.ctcvr_tower = second
        else:
            self.cvr_tower = second

    @property
    def embedding(self):
        """The shared embedding table (the CTR side's when the sides have their own)."""
        return self.input.embedding

    def pooled_features(self, ids):
        """[B, width] ids -> [B, F * D] pooled embeddings of the (first) input."""
        pooled = self.input.pooled(ids)
        return pooled.reshape([-1, pooled.shape[1] * pooled.shape[2]])

    def forward(self, ids):
        ctr_x, ctr_pooled = self.input(ids)
        cvr_x, pooled = ctr_x, [ctr_pooled]
        if self.cvr_input is not None:
            cvr_x, cvr_pooled = self.cvr_input(ids)
            pooled.append(cvr_pooled)
        ctr_logit = self.ctr_tower(ctr_x)
        if self.variant == "division":
            out = division_outputs(ctr_logit, self.ctcvr_tower(cvr_x))
        else:
            out = entire_space_outputs(ctr_logit, self.cvr_tower(cvr_x))
        out["embedding_reg"] = self.embedding_penalty(pooled)
        return out

    def loss(self, outputs: dict, labels: dict):
        """Total training loss and its parts; `labels` maps label names to [B, 1] float32."""
        if self.variant in ("esmm", "esmm_ns"):
            return self.ctr_cvr_loss(outputs, labels, "entire_space")
        if self.variant == "base":
            return self.ctr_cvr_loss(outputs, labels, "clicked")
        return self.ctr_cvr_loss(outputs, labels, "ctcvr_head")  # division: CTR, CTCVR apart
