"""Deterministic synthetic Ali-CCP: impressions with known true pCTR and pCVR.

Writes PaddleRec's Ali-CCP slot format (default) or the raw Tianchi layout, plus the true
probabilities of every impression, so that a model's AUC can be compared with the oracle's.

    python datasets/ali-ccp/synthetic.py --n 1000000 --out data/synthetic --seed 0
    python datasets/ali-ccp/synthetic.py --preset sample --n 4000 --out /tmp/s --seed 2018

From Python::

    from paddle_rec_zoo.data.ali_ccp import synthetic
    meta = synthetic.generate("/tmp/x", n_train=20000, seed=1)

Generative process
------------------
Everything is drawn from numpy generators seeded by ``(seed, stream)``, one stream per stage, so the
same seed gives the same bytes, and the slot and raw formats describe the same impressions.

Universe (shared by train and test). ``k = latent_dim``; ``N(0, 1)`` draws are independent.

* Item hierarchy. Category ``g`` has a taste vector ``c_g ~ N(0, I_k)`` and a size drawn from a
  Zipf law. Every shop, brand and intention node belongs to one category (many-to-one). An item
  belongs to a shop (shop sizes are Zipf-like), takes its category from the shop, a brand of that
  category and 1..``max_item_intentions`` intention nodes of that category (field 210 is
  multi-valued). Its click-taste vector is
  ``v_i ∝ c_g + 0.6 d_shop + 0.5 d_brand + 0.4 mean(d_node) + 0.6 e_i``, so category, shop, brand
  and intention fields each reveal part of ``v_i`` and only the item id reveals all of it.
* Items also have a click attractiveness ``a_i ~ attract_scale N(0,1)``, a popularity weight
  ``w_i`` (Zipf-Mandelbrot, ``(rank + 10)^-item_zipf``, ranks shuffled) that drives both how often
  the item is shown and a click bonus ``pop_scale * standardised log w_i``, a purchase-taste vector
  ``b_i = rho v_i + sqrt(1 - rho^2) z_i`` (``rho = buy_taste_rho``; ``z_i`` mixes a brand vector and
  an item vector) and a quality
  ``q_i = quality_scale std(sqrt(s) (0.8 q_shop + 0.6 q_brand) + sqrt(1 - s) q_own)`` with
  ``s = quality_coarse_share`` and ``q_own = -gamma a~_i + sqrt(1 - gamma^2) eps_i``, where ``a~_i``
  is the standardised attractiveness and ``gamma = quality_attract_corr``: items that attract
  clicks tend to convert poorly, so CVR is not a function of CTR.
* Users. Profile fields 121, 122, 124 (gender), 125 (age), 126, 127, 128, 129 take values from
  skewed marginals (cardinalities as in real Ali-CCP). Each profile value has an embedding; the
  user's taste ``u = sqrt(profile_signal) D_u + sqrt(1 - profile_signal) N(0, I_k)``, with ``D_u``
  the standardised sum of the user's profile-value embeddings, so the profile is a noisy view of
  ``u``. Click propensity ``act_u`` is partly explained by age
  (125), purchase propensity ``r_u`` partly by 129. Users' visit frequencies are Zipf-Mandelbrot
  (``(rank + 10)^-user_zipf``). Every user prefers ``pref_categories`` categories drawn by
  Gumbel-top-k on ``2 <u, c_g>/sqrt(k) + log size_g``.
* Histories (109_14 categories, 110_14 shops, 127_14 brands, 150_14 intention nodes). Each user
  "liked" ``L_u`` items, ``L_u`` between ``min_history`` and ``max_history`` (longer for more
  active users): ``3 max_history`` candidates are drawn from the exposure distribution below and
  the ``L_u`` best by ``taste_scale <u, v_i>/sqrt(k) + a_i + Gumbel`` are kept. The history
  fields are the distinct categories/shops/brands/nodes of those items, most frequent first (in raw
  output the value is ``log(1 + count)``). Histories are a partial, noisy view of ``u``.

Impressions, in time order (train first, then test: "test = later impressions"). ``--day D``
draws another day's sessions, impressions and labels from the same world (day 0 is the default
output, byte for byte).

* Sessions: a user drawn by visit frequency and a geometric number of impressions (mean
  ``session_mean``). In raw output a session is one ``common_feature_index`` row.
* Exposure: with probability ``personal_rate`` the item comes from one of the user's preferred
  categories, else from the whole catalogue; within either, items are drawn by popularity ``w_i``.
* Context 301: a position ``j`` in ``1..n_positions`` with ``P(j) ∝ 1/j``, independent of the rest.
* Crosses, hashed into ``cross_buckets`` ids each and present only when the user's history holds
  the item's attribute: 508 = (gender, age) x category if the category is in 109_14; 509 = user x
  shop if the shop is in 110_14; 702 = user x brand if the brand is in 127_14; 853 = user x node for
  every item node in 150_14 (multi-valued). Missing crosses are simply absent from the line.
* Truth, with ``fam = [shop in the user's shop history]``::

      pctr = sigmoid(alpha_ctr + taste_scale <u, v_i>/sqrt(k) + a_i + pop_i + act_u
                     - position_scale log j + familiarity_scale fam)
      pcvr = sigmoid(alpha_cvr + buy_taste_scale <u, b_i>/sqrt(k) + q_i + r_u
                     + familiarity_scale fam)

  Position changes CTR but not CVR. ``alpha_ctr`` and ``alpha_cvr`` are solved (bisection on a
  pilot of ``pilot_rows`` impressions of a separate stream) so that the expected CTR is ``ctr`` and
  the expected CVR among clicks, ``E[pctr pcvr] / E[pctr]``, is ``cvr``. Both probabilities are
  rounded to 8 decimals, exactly as written in the truth files, before labels are drawn:
  ``click ~ Bernoulli(pctr)``, ``buy = click * Bernoulli(pcvr)``.

Outputs (``OUT/``)
------------------
* slot: ``train_data/part-0000K.txt``, ``test_data/part-0000K.txt`` (folder names set by
  ``--train-dir``/``--test-dir``, ``K < --files``); a line is
  ``sample_id,click,buy,`` then ``field:feasign`` tokens (210 first, then item tokens in a per-item
  order, 301, crosses, profile, 150_14, 127_14, 109_14, 110_14). Feasigns are global ids, one
  contiguous range per field (``meta.json: field_ranges``), 0 is never written.
* raw: ``sample_skeleton_{train,test}.csv`` (``sample_id,click,buy,common_feature_index,
  feature_num,feature_list``) and ``common_features_{train,test}.csv``
  (``common_feature_index,feature_num,feature_list``), items ``field\\x02id\\x03value`` joined by
  ``\\x01``, with raw per-field ids (large integers, not remapped). User-side fields are in the
  common features, item, context and cross fields in the skeleton. A few ``click=0,buy=1`` noise
  rows are inserted (each a copy of the row before it, with a new sample id above all real ids);
  they are not in the truth files and the converter must drop them.
* both: ``truth_{train,test}.csv`` (``sample_id,pctr,pcvr``, pcvr = p(buy | click)) and
  ``meta.json``: parameters, calibrated intercepts, rows, observed rates, oracle AUCs (CTR on all
  rows, CVR on clicked rows, CTCVR on all rows, and CVR over the entire space against a label drawn
  ``Bernoulli(pcvr)`` for every impression), ``sparse_feature_number`` and ``field_ranges``.
"""

from __future__ import annotations

import argparse
import difflib
import hashlib
import json
import math
import sys
import time
from pathlib import Path

import numpy as np

from paddle_rec_zoo.data.ali_ccp import (
    HISTORY_FIELDS,
    PROFILE_CARDINALITY,
    PROFILE_FIELDS,
    RAW_COMMON,
    RAW_SKELETON,
)
from paddle_rec_zoo.data.ali_ccp.vocabulary import (
    FEASIGN_ORDER as FIELDS,  # feasign ranges in the converter's order
)
from paddle_rec_zoo.report.metrics import auc

USER_FIELDS = ("101", *PROFILE_FIELDS, *HISTORY_FIELDS)
ITEM_FIELDS = ("205", "206", "207", "210", "216")
CROSS_FIELDS = ("508", "509", "702", "853")

ZIPF_OFFSET = 10.0  # Zipf-Mandelbrot offset: keeps the head user/item from dominating
CHUNK_ROWS = 20_000  # rows formatted and written at a time
_TINY = 1e-12  # keeps a ratio finite when its denominator is 0

# name -> (value in the "default" preset, help). None = scaled with n_train (see help).
PARAMS: dict[str, tuple[object, str]] = {
    "n_users": (None, "users; auto: max(200, n_train // 50)"),
    "n_items": (None, "items; auto: max(300, n_train // 33)"),
    "n_categories": (None, "categories (206, 109_14); auto: max(10, n_items // 100)"),
    "n_shops": (None, "shops (207, 110_14); auto: max(20, n_items // 6)"),
    "n_brands": (None, "brands (216, 127_14); auto: max(20, n_items // 10)"),
    "n_intentions": (None, "intention nodes (210, 150_14); auto: max(20, n_items // 20)"),
    "cross_buckets": (None, "hash buckets per cross field; auto: max(200, n_train // 10)"),
    "n_positions": (3, "values of the position-like context field 301"),
    "latent_dim": (8, "dimension k of the user/item taste vectors"),
    "ctr": (0.04, "target expected click-through rate"),
    "cvr": (0.06, "target expected conversion rate among clicks"),
    "min_history": (5, "fewest liked items behind a user's history fields"),
    "max_history": (50, "most liked items behind a user's history fields"),
    "max_item_intentions": (4, "most intention nodes (field 210) per item"),
    "pref_categories": (3, "preferred categories per user (personalised exposure)"),
    "personal_rate": (0.5, "share of impressions drawn from the user's preferred categories"),
    "session_mean": (20.0, "mean impressions per session (one common_feature_index)"),
    "user_zipf": (0.9, "Zipf exponent of user visit frequency"),
    "item_zipf": (1.0, "Zipf exponent of item popularity"),
    "profile_signal": (0.5, "share of the user taste variance explained by the profile fields"),
    "taste_scale": (0.55, "weight of <u, v_i> in the click logit"),
    "attract_scale": (0.37, "std of item click attractiveness"),
    "pop_scale": (0.2, "click bonus per std of log item popularity"),
    "activity_scale": (0.33, "std of user click propensity"),
    "position_scale": (0.35, "click penalty per log position"),
    "familiarity_scale": (0.3, "click and buy bonus when the item's shop is in the user's history"),
    "buy_taste_scale": (0.65, "weight of <u, b_i> in the buy logit"),
    "buy_taste_rho": (0.2, "correlation of the purchase taste b_i with the click taste v_i"),
    "quality_scale": (0.72, "std of item quality (buy logit)"),
    "quality_attract_corr": (0.8, "how strongly quality falls with click attractiveness (0..1)"),
    "quality_coarse_share": (0.25, "share of item quality variance set by its shop and brand"),
    "purchase_scale": (0.4, "std of user purchase propensity"),
    "noise_rate": (1e-4, "click=0,buy=1 noise rows per real row in raw output (at least 3)"),
    "pilot_rows": (100_000, "impressions used to solve the intercepts for ctr and cvr"),
}

PRESETS: dict[str, dict[str, object]] = {
    "default": {},
    # Tiny universe with strong effects and high rates: learnable from a few thousand lines.
    "sample": {
        "n_users": 100,
        "n_items": 150,
        "n_categories": 10,
        "n_shops": 30,
        "n_brands": 25,
        "n_intentions": 40,
        "cross_buckets": 200,
        "ctr": 0.2,
        "cvr": 0.25,
        "min_history": 1,
        "max_history": 4,
        "max_item_intentions": 2,
        "pref_categories": 2,
        "session_mean": 8.0,
        "user_zipf": 0.5,
        "item_zipf": 0.6,
        "taste_scale": 1.0,
        "attract_scale": 1.3,
        "activity_scale": 0.5,
        "position_scale": 0.6,
        "buy_taste_scale": 1.0,
        "quality_scale": 2.2,
        "quality_coarse_share": 0.8,
        "purchase_scale": 1.0,
        "pilot_rows": 50_000,
    },
}

STREAMS = {
    "world": 1,
    "history": 2,
    "pilot": 3,
    "timeline": 4,
    "labels": 5,
    "entire": 6,
    "noise": 7,
}


DAY_ID_STRIDE = 10**9  # day d's sample ids start at d * DAY_ID_STRIDE + 1


def _rng(seed: int, stream: str, day: int = 0) -> np.random.Generator:
    # day 0 keeps the seeding of the single-day generator (same seed, same bytes as before)
    return np.random.default_rng([seed, STREAMS[stream]] + ([day] if day else []))


def resolve_params(n_train: int, preset: str = "default", **params) -> dict:
    """Preset values, overridden by ``params``, with the auto-scaled sizes filled in."""
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; known: {', '.join(PRESETS)}")
    for name in params:
        if name not in PARAMS:
            close = difflib.get_close_matches(name, PARAMS, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ValueError(f"unknown generator parameter {name!r}{hint}")
    p = {name: default for name, (default, _) in PARAMS.items()}
    p.update(PRESETS[preset])
    p.update({k: v for k, v in params.items() if v is not None})
    auto = {
        "n_users": lambda: max(200, n_train // 50),
        "n_items": lambda: max(300, n_train // 33),
        "n_categories": lambda: max(10, p["n_items"] // 100),
        "n_shops": lambda: max(20, p["n_items"] // 6),
        "n_brands": lambda: max(20, p["n_items"] // 10),
        "n_intentions": lambda: max(20, p["n_items"] // 20),
        "cross_buckets": lambda: max(200, n_train // 10),
    }
    for name, rule in auto.items():  # in order: category sizes depend on n_items
        if p[name] is None:
            p[name] = rule()
    for name, (default, _) in PARAMS.items():
        if isinstance(default, int) or (default is None):
            p[name] = int(p[name])
        else:
            p[name] = float(p[name])
    if not 0 < p["ctr"] < 1 or not 0 < p["cvr"] < 1:
        raise ValueError("ctr and cvr must be in (0, 1)")
    if not 1 <= p["min_history"] <= p["max_history"]:
        raise ValueError("need 1 <= min_history <= max_history")
    if p["n_categories"] > min(p["n_items"], p["n_shops"], p["n_brands"], p["n_intentions"]):
        raise ValueError("need n_categories <= n_items, n_shops, n_brands and n_intentions")
    return p


# ----------------------------------------------------------------------------- universe


def _zipf(n: int, exponent: float, rng: np.random.Generator) -> np.ndarray:
    """Zipf-Mandelbrot probabilities over n entities with shuffled ranks."""
    ranks = rng.permutation(n).astype(np.float64)
    w = (ranks + 1.0 + ZIPF_OFFSET) ** -exponent
    return w / w.sum()


def _std(x: np.ndarray) -> np.ndarray:
    return (x - x.mean()) / (x.std() + _TINY)


def _assign(n: int, n_groups: int, weights: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Group of each of n entities; the first n_groups cover every group once."""
    g = rng.choice(n_groups, size=n, p=weights)
    g[:n_groups] = rng.permutation(n_groups)
    return g


def _members(group: np.ndarray, n_groups: int) -> tuple[np.ndarray, np.ndarray]:
    """Entities sorted by group, and the start offset of each group in that order."""
    order = np.argsort(group, kind="stable")
    starts = np.searchsorted(group[order], np.arange(n_groups + 1))
    return order, starts


def _pick_in_group(groups, order, starts, rng):
    """One uniformly chosen member of each requested group."""
    lo, hi = starts[groups], starts[groups + 1]
    return order[lo + (rng.random(len(groups)) * (hi - lo)).astype(np.int64)]


class Universe:
    """Users, items, their latents and histories: everything shared by train and test."""

    def __init__(self, p: dict, seed: int):
        self.p = p
        rng = _rng(seed, "world")
        k = p["latent_dim"]
        n_cat, n_shop, n_brand, n_node = (
            p["n_categories"], p["n_shops"], p["n_brands"], p["n_intentions"],
        )  # fmt: skip
        n_items, n_users = p["n_items"], p["n_users"]

        # item hierarchy: category <- shop/brand/node <- item
        cat_vec = rng.standard_normal((n_cat, k))
        cat_size = _zipf(n_cat, 0.8, rng)
        shop_cat = _assign(n_shop, n_cat, cat_size, rng)
        brand_cat = _assign(n_brand, n_cat, cat_size, rng)
        node_cat = _assign(n_node, n_cat, cat_size, rng)
        shop_vec = rng.standard_normal((n_shop, k))
        brand_vec = rng.standard_normal((n_brand, k))
        node_vec = rng.standard_normal((n_node, k))
        shop_q = rng.standard_normal(n_shop)
        brand_q = rng.standard_normal(n_brand)
        brand_buy = rng.standard_normal((n_brand, k))

        item_shop = rng.choice(n_shop, size=n_items, p=_zipf(n_shop, 0.7, rng))
        # every category gets an item: the first n_cat items use one shop of each category
        shop_order, shop_starts = _members(shop_cat, n_cat)
        item_shop[:n_cat] = shop_order[shop_starts[:-1]]
        item_cat = shop_cat[item_shop]
        brand_order, brand_starts = _members(brand_cat, n_cat)
        item_brand = _pick_in_group(item_cat, brand_order, brand_starts, rng)
        node_order, node_starts = _members(node_cat, n_cat)
        m = p["max_item_intentions"]
        item_nodes = np.stack(
            [_pick_in_group(item_cat, node_order, node_starts, rng) for _ in range(m)], 1
        )
        n_nodes = 1 + rng.binomial(m - 1, 0.35, size=n_items)
        item_nodes[np.arange(m)[None, :] >= n_nodes[:, None]] = -1
        dup = np.zeros_like(item_nodes, dtype=bool)  # a node listed twice is listed once
        for j in range(1, m):
            dup[:, j] = (item_nodes[:, j : j + 1] == item_nodes[:, :j]).any(1)
        item_nodes[dup] = -1
        node_mask = item_nodes >= 0
        node_mean = (node_vec[np.maximum(item_nodes, 0)] * node_mask[..., None]).sum(1)
        node_mean /= node_mask.sum(1, keepdims=True)

        v = (
            cat_vec[item_cat]
            + 0.6 * shop_vec[item_shop]
            + 0.5 * brand_vec[item_brand]
            + 0.4 * node_mean
            + 0.6 * rng.standard_normal((n_items, k))
        )
        v /= v.std(0, keepdims=True)
        rho = p["buy_taste_rho"]
        z = 0.6 * brand_buy[item_brand] + 0.8 * rng.standard_normal((n_items, k))
        b = rho * v + math.sqrt(1 - rho**2) * z / z.std(0, keepdims=True)

        item_pop = _zipf(n_items, p["item_zipf"], rng)
        attract = rng.standard_normal(n_items)
        gamma = p["quality_attract_corr"]
        own_q = -gamma * attract + math.sqrt(max(0.0, 1 - gamma**2)) * rng.standard_normal(n_items)
        share = p["quality_coarse_share"]
        coarse = 0.8 * shop_q[item_shop] + 0.6 * brand_q[item_brand]
        quality = math.sqrt(share) * coarse + math.sqrt(1 - share) * own_q
        self.item_click_bias = p["attract_scale"] * attract + p["pop_scale"] * _std(
            np.log(item_pop)
        )
        self.item_quality = p["quality_scale"] * _std(quality)
        self.item_v, self.item_b = v, b
        self.item_cat, self.item_shop, self.item_brand = item_cat, item_shop, item_brand
        self.item_nodes = item_nodes
        self.item_attract = p["attract_scale"] * attract

        # users: profile -> taste; Zipf visit frequency
        demo = np.zeros((n_users, k))
        profile = {}
        for f in PROFILE_FIELDS:
            card = PROFILE_CARDINALITY[f]
            vals = rng.choice(card, size=n_users, p=_zipf(card, 1.0, rng) if card > 2 else None)
            demo += rng.standard_normal((card, k))[vals]
            profile[f] = vals
        demo /= demo.std(0, keepdims=True)
        ps = p["profile_signal"]
        u = math.sqrt(ps) * demo + math.sqrt(1 - ps) * rng.standard_normal((n_users, k))
        self.user_u = u
        self.profile = profile
        self.user_freq = _zipf(n_users, p["user_zipf"], rng)
        age_act = rng.standard_normal(PROFILE_CARDINALITY["125"])
        self.user_act = p["activity_scale"] * (
            0.5 * age_act[profile["125"]] + math.sqrt(0.75) * rng.standard_normal(n_users)
        )
        level_buy = rng.standard_normal(PROFILE_CARDINALITY["129"])
        self.user_buy = p["purchase_scale"] * (
            0.6 * level_buy[profile["129"]] + 0.8 * rng.standard_normal(n_users)
        )
        cat_mass = np.bincount(item_cat, weights=item_pop, minlength=n_cat)
        pref_score = 2.0 * (u @ cat_vec.T) / math.sqrt(k) + np.log(cat_mass + 1e-300)
        pref_score += rng.gumbel(size=pref_score.shape)
        n_pref = min(p["pref_categories"], n_cat)
        self.user_pref = np.argsort(-pref_score, axis=1, kind="stable")[:, :n_pref]

        # exposure tables: items sorted by category with cumulative popularity
        self.item_pop = item_pop
        self.pop_cum = np.cumsum(item_pop)
        self.cat_order, cat_starts = _members(item_cat, n_cat)
        self.cat_cum = np.r_[0.0, np.cumsum(item_pop[self.cat_order])]
        self.cat_lo = self.cat_cum[cat_starts[:-1]]
        self.cat_hi = self.cat_cum[cat_starts[1:]]
        self.cat_starts = cat_starts

        self._build_histories(seed)

    def sample_items(self, users: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """Items shown to ``users``: personalised by preferred category, else global popularity."""
        n = len(users)
        personal = rng.random(n) < self.p["personal_rate"]
        pick = rng.integers(0, self.user_pref.shape[1], size=n)
        r = rng.random(n)
        cats = self.user_pref[users, pick]
        lo, hi = self.cat_lo[cats], self.cat_hi[cats]
        pos = np.searchsorted(self.cat_cum, lo + r * (hi - lo), side="right") - 1
        pos = np.clip(pos, self.cat_starts[cats], self.cat_starts[cats + 1] - 1)
        personal_item = self.cat_order[pos]
        global_item = np.searchsorted(self.pop_cum, r * self.pop_cum[-1], side="right")
        global_item = np.minimum(global_item, len(self.item_pop) - 1)
        return np.where(personal, personal_item, global_item)

    def taste(self, users, items) -> np.ndarray:
        k = self.p["latent_dim"]
        return np.einsum("ij,ij->i", self.user_u[users], self.item_v[items]) / math.sqrt(k)

    def _build_histories(self, seed: int) -> None:
        """Per user: the distinct categories/shops/brands/nodes of the items they liked."""
        p = self.p
        rng = _rng(seed, "history")
        n_users = p["n_users"]
        lo, hi = p["min_history"], p["max_history"]
        activity = _std(np.log(self.user_freq)) + rng.standard_normal(n_users)
        frac = 1.0 / (1.0 + np.exp(-activity))
        length = lo + np.round(frac * (hi - lo)).astype(np.int64)
        cands = 3 * hi
        liked_user, liked_item = [], []
        for start in range(0, n_users, 4096):
            users = np.arange(start, min(n_users, start + 4096))
            rep = np.repeat(users, cands)
            items = self.sample_items(rep, rng)
            score = p["taste_scale"] * self.taste(rep, items) + self.item_attract[items]
            score = (score + rng.gumbel(size=len(rep))).reshape(len(users), cands)
            order = np.argsort(-score, axis=1, kind="stable")
            keep = np.arange(cands)[None, :] < length[users][:, None]
            chosen = np.take_along_axis(items.reshape(len(users), cands), order, 1)[keep]
            liked_user.append(np.repeat(users, length[users]))
            liked_item.append(chosen)
        user = np.concatenate(liked_user)
        item = np.concatenate(liked_item)
        nodes = self.item_nodes[item]
        values = {
            "109_14": (user, self.item_cat[item], p["n_categories"]),
            "110_14": (user, self.item_shop[item], p["n_shops"]),
            "127_14": (user, self.item_brand[item], p["n_brands"]),
            "150_14": (
                np.repeat(user, nodes.shape[1])[nodes.ravel() >= 0],
                nodes.ravel()[nodes.ravel() >= 0],
                p["n_intentions"],
            ),
        }
        # field -> (sorted membership keys, per-user (values, counts) slices)
        self.history = {}
        for field, (us, vals, card) in values.items():
            keys, counts = np.unique(us.astype(np.int64) * card + vals, return_counts=True)
            ku, kv = keys // card, keys % card
            order = np.lexsort((kv, -counts, ku))  # per user: most frequent first
            ku, kv, kc = ku[order], kv[order], counts[order]
            bounds = np.searchsorted(ku, np.arange(n_users + 1))
            self.history[field] = {
                "keys": keys,
                "card": card,
                "values": kv,
                "counts": kc,
                "bounds": bounds,
            }

    def in_history(self, field: str, users: np.ndarray, vals: np.ndarray) -> np.ndarray:
        h = self.history[field]
        keys = users.astype(np.int64) * h["card"] + vals
        pos = np.minimum(np.searchsorted(h["keys"], keys), len(h["keys"]) - 1)
        return (h["keys"][pos] == keys) & (vals >= 0)


# ----------------------------------------------------------------------------- impressions


def _mix(a: np.ndarray, b: np.ndarray, salt: int) -> np.ndarray:
    """splitmix64 of (a, b, salt): a stable hash for the cross features."""
    with np.errstate(over="ignore"):
        x = a.astype(np.uint64) * np.uint64(0x9E3779B97F4A7C15)
        x ^= b.astype(np.uint64) + np.uint64(salt * 0x632BE59BD9B4E019 % 2**64)
        x ^= x >> np.uint64(30)
        x *= np.uint64(0xBF58476D1CE4E5B9)
        x ^= x >> np.uint64(27)
        x *= np.uint64(0x94D049BB133111EB)
        x ^= x >> np.uint64(31)
    return x


def _sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


def _features(universe: Universe, users, items, rng) -> dict:
    """Per-impression context and crosses plus the intercept-free logits."""
    p = universe.p
    n = len(users)
    n_pos = p["n_positions"]
    pos_p = 1.0 / np.arange(1, n_pos + 1)
    position = rng.choice(n_pos, size=n, p=pos_p / pos_p.sum())  # 0-based
    buckets = np.uint64(p["cross_buckets"])
    cat, shop, brand = (
        universe.item_cat[items],
        universe.item_shop[items],
        universe.item_brand[items],
    )
    nodes = universe.item_nodes[items]
    demo = (
        universe.profile["124"][users] * PROFILE_CARDINALITY["125"] + universe.profile["125"][users]
    )
    has_cat = universe.in_history("109_14", users, cat)
    has_shop = universe.in_history("110_14", users, shop)
    has_brand = universe.in_history("127_14", users, brand)
    cross = {
        "508": np.where(has_cat, (_mix(demo, cat, 508) % buckets).astype(np.int64), -1),
        "509": np.where(has_shop, (_mix(users, shop, 509) % buckets).astype(np.int64), -1),
        "702": np.where(has_brand, (_mix(users, brand, 702) % buckets).astype(np.int64), -1),
    }
    cols = []
    for j in range(nodes.shape[1]):
        has = universe.in_history("150_14", users, nodes[:, j])
        cols.append(np.where(has, (_mix(users, nodes[:, j], 853) % buckets).astype(np.int64), -1))
    for j in range(1, len(cols)):  # two nodes hashed into one bucket: one token
        dup = (cols[j][:, None] == np.stack(cols[:j], 1)).any(1)
        cols[j] = np.where(dup, -1, cols[j])
    cross["853"] = np.stack(cols, 1)
    fam = p["familiarity_scale"] * has_shop
    k = p["latent_dim"]
    buy_taste = np.einsum("ij,ij->i", universe.user_u[users], universe.item_b[items]) / math.sqrt(k)
    click_logit = (
        p["taste_scale"] * universe.taste(users, items)
        + universe.item_click_bias[items]
        + universe.user_act[users]
        - p["position_scale"] * np.log1p(position)
        + fam
    )
    buy_logit = (
        p["buy_taste_scale"] * buy_taste
        + universe.item_quality[items]
        + universe.user_buy[users]
        + fam
    )
    return {
        "position": position,
        "cross": cross,
        "click_logit": click_logit,
        "buy_logit": buy_logit,
    }


def _bisect(fn, target: float) -> float:
    lo, hi = -40.0, 40.0
    for _ in range(80):
        mid = 0.5 * (lo + hi)
        if fn(mid) < target:
            lo = mid
        else:
            hi = mid
    return 0.5 * (lo + hi)


def _calibrate(universe: Universe, seed: int) -> tuple[float, float]:
    """Intercepts giving E[pctr] = ctr and E[pctr pcvr] / E[pctr] = cvr on a pilot sample."""
    rng = _rng(seed, "pilot")
    n = universe.p["pilot_rows"]
    users = rng.choice(universe.p["n_users"], size=n, p=universe.user_freq)
    items = universe.sample_items(users, rng)
    f = _features(universe, users, items, rng)
    a_ctr = _bisect(lambda a: _sigmoid(a + f["click_logit"]).mean(), universe.p["ctr"])
    pctr = _sigmoid(a_ctr + f["click_logit"])
    a_cvr = _bisect(
        lambda a: (pctr * _sigmoid(a + f["buy_logit"])).sum() / pctr.sum(), universe.p["cvr"]
    )
    return a_ctr, a_cvr


def _timeline(universe: Universe, n_rows: int, rng) -> tuple[np.ndarray, np.ndarray]:
    """Session id and user of each impression, in time order."""
    mean = universe.p["session_mean"]
    lengths = []
    total = 0
    while total < n_rows:
        extra = rng.geometric(min(1.0, 1.0 / mean), size=int((n_rows - total) / mean * 1.1) + 16)
        lengths.append(extra)
        total += int(extra.sum())
    lengths = np.concatenate(lengths)
    n_sessions = int(np.searchsorted(np.cumsum(lengths), n_rows)) + 1
    lengths = lengths[:n_sessions]
    session_user = rng.choice(universe.p["n_users"], size=n_sessions, p=universe.user_freq)
    session = np.repeat(np.arange(n_sessions), lengths)[:n_rows]
    return session, session_user[session]


# ----------------------------------------------------------------------------- writing


def field_ranges(p: dict) -> dict[str, tuple[int, int]]:
    """First and last global feasign of every field (slot format); 0 is padding."""
    size = {"101": p["n_users"], "205": p["n_items"], "301": p["n_positions"]}
    size.update(PROFILE_CARDINALITY)
    for f, n in (("206", "n_categories"), ("109_14", "n_categories"), ("207", "n_shops"),
                 ("110_14", "n_shops"), ("216", "n_brands"), ("127_14", "n_brands"),
                 ("210", "n_intentions"), ("150_14", "n_intentions")):  # fmt: skip
        size[f] = p[n]
    for f in CROSS_FIELDS:
        size[f] = p["cross_buckets"]
    ranges, start = {}, 1
    for f in FIELDS:
        ranges[f] = (start, start + size[f] - 1)
        start += size[f]
    return ranges


def _raw_id(field: str, idx):
    """Raw Tianchi-like feature id: a bijection of the index onto large integers."""
    salt = int(hashlib.md5(field.encode()).hexdigest()[:8], 16)
    return (np.asarray(idx, dtype=np.int64) * 1_640_531_527 + salt) % 2_147_483_647


class Writer:
    """Formats users, items and impressions in the slot or raw layout."""

    def __init__(self, universe: Universe, fmt: str, seed: int, day: int = 0):
        self.universe, self.fmt, self.seed, self.day = universe, fmt, seed, day
        self.ranges = field_ranges(universe.p)
        if fmt == "slot":
            self.user_str = self._slot_users()
            self.item_str = self._slot_items()
        else:
            self.user_str, self.user_num = self._raw_users()
            self.item_str, self.item_num = self._raw_items()

    def _ids(self, field, idx):
        return (np.asarray(idx) + self.ranges[field][0]).tolist()

    def _slot_users(self) -> list[str]:
        w = self.universe
        n = w.p["n_users"]
        cols = [[f"121:{x}" for x in self._ids("121", w.profile["121"])],
                [f"122:{x}" for x in self._ids("122", w.profile["122"])],
                [f"101:{x}" for x in self._ids("101", np.arange(n))]]  # fmt: skip
        for f in PROFILE_FIELDS[2:]:
            cols.append([f"{f}:{x}" for x in self._ids(f, w.profile[f])])
        head = [",".join(parts) for parts in zip(*cols, strict=True)]
        hist = []
        for f in HISTORY_FIELDS:
            h = w.history[f]
            toks = [f"{f}:{x}" for x in self._ids(f, h["values"])]
            b = h["bounds"].tolist()
            hist.append([",".join(toks[b[i] : b[i + 1]]) for i in range(n)])
        return [",".join(parts) for parts in zip(head, *hist, strict=True)]

    def _slot_items(self) -> list[str]:
        w = self.universe
        n = w.p["n_items"]
        order_rng = np.random.default_rng([self.seed, 99])
        nodes = w.item_nodes
        node_ids = (nodes + self.ranges["210"][0]).tolist()
        single = {
            "216": self._ids("216", w.item_brand),
            "205": self._ids("205", np.arange(n)),
            "206": self._ids("206", w.item_cat),
            "207": self._ids("207", w.item_shop),
        }
        perms = [order_rng.permutation(4) for _ in range(n)]
        names = list(single)
        out = []
        for i in range(n):
            toks = [f"210:{x}" for x, raw in zip(node_ids[i], nodes[i], strict=True) if raw >= 0]
            toks += [f"{names[j]}:{single[names[j]][i]}" for j in perms[i]]
            out.append(",".join(toks))
        return out

    def _raw_users(self) -> tuple[list[str], list[int]]:
        w = self.universe
        n = w.p["n_users"]
        cols = [[f"101\x02{x}\x031.0" for x in _raw_id("101", np.arange(n)).tolist()]]
        for f in PROFILE_FIELDS:
            cols.append([f"{f}\x02{x}\x031.0" for x in _raw_id(f, w.profile[f]).tolist()])
        num = np.full(n, len(cols))
        for f in HISTORY_FIELDS:
            h = w.history[f]
            vals = np.log1p(h["counts"])
            toks = [
                f"{f}\x02{x}\x03{v:.5f}"
                for x, v in zip(_raw_id(f, h["values"]).tolist(), vals.tolist(), strict=True)
            ]
            b = h["bounds"].tolist()
            cols.append(["\x01".join(toks[b[i] : b[i + 1]]) for i in range(n)])
            num += np.diff(h["bounds"])
        return [
            "\x01".join(c for c in parts if c) for parts in zip(*cols, strict=True)
        ], num.tolist()

    def _raw_items(self) -> tuple[list[str], list[int]]:
        w = self.universe
        n = w.p["n_items"]
        cols = [
            [f"205\x02{x}\x031.0" for x in _raw_id("205", np.arange(n)).tolist()],
            [f"206\x02{x}\x031.0" for x in _raw_id("206", w.item_cat).tolist()],
            [f"207\x02{x}\x031.0" for x in _raw_id("207", w.item_shop).tolist()],
            [f"216\x02{x}\x031.0" for x in _raw_id("216", w.item_brand).tolist()],
        ]
        raw_nodes = _raw_id("210", np.maximum(w.item_nodes, 0)).tolist()
        out, num = [], []
        for i in range(n):
            toks = [
                f"210\x02{x}\x031.0"
                for x, raw in zip(raw_nodes[i], w.item_nodes[i], strict=True)
                if raw >= 0
            ]
            toks += [c[i] for c in cols]
            out.append("\x01".join(toks))
            num.append(len(toks))
        return out, num

    def _cross_tokens(self, cross: dict, sl: slice) -> tuple[list[str], list[int]]:
        """Per row: the context-free cross tokens (slot: with a trailing comma) and their count."""
        parts, counts = [], np.zeros(sl.stop - sl.start, dtype=np.int64)
        cols = [(f, cross[f][sl]) for f in ("508", "509", "702")]
        cols += [("853", cross["853"][sl, j]) for j in range(cross["853"].shape[1])]
        for f, col in cols:
            present = col >= 0
            counts += present
            if self.fmt == "slot":
                ids = (col + self.ranges[f][0]).tolist()
                parts.append(
                    [f"{f}:{x}," if ok else "" for x, ok in zip(ids, present.tolist(), strict=True)]
                )
            else:
                ids = _raw_id(f, np.maximum(col, 0)).tolist()
                parts.append(
                    [
                        f"\x01{f}\x02{x}\x031.0" if ok else ""
                        for x, ok in zip(ids, present.tolist(), strict=True)
                    ]
                )
        return ["".join(t) for t in zip(*parts, strict=True)], counts.tolist()

    def slot_lines(self, rows: dict, sl: slice) -> str:
        sid = rows["sample_id"][sl].tolist()
        click, buy = rows["click"][sl].tolist(), rows["buy"][sl].tolist()
        users, items = rows["user"][sl].tolist(), rows["item"][sl].tolist()
        pos = (rows["position"][sl] + self.ranges["301"][0]).tolist()
        cross, _ = self._cross_tokens(rows["cross"], sl)
        us, it = self.user_str, self.item_str
        return "".join(
            f"{s},{c},{b},{it[i]},301:{p},{x}{us[u]}\n"
            for s, c, b, i, p, x, u in zip(sid, click, buy, items, pos, cross, users, strict=True)
        )

    def raw_lines(self, rows: dict, sl: slice, noise_after: dict) -> str:
        sid = rows["sample_id"][sl].tolist()
        click, buy = rows["click"][sl].tolist(), rows["buy"][sl].tolist()
        items = rows["item"][sl].tolist()
        cfi = [self.session_key(s) for s in rows["session"][sl].tolist()]
        pos = _raw_id("301", rows["position"][sl]).tolist()
        cross, ncross = self._cross_tokens(rows["cross"], sl)
        it, num = self.item_str, self.item_num
        out = []
        for j, (s, c, b, i, k, p, x, nx) in enumerate(
            zip(sid, click, buy, items, cfi, pos, cross, ncross, strict=True)
        ):
            body = f"{k},{num[i] + 1 + nx},{it[i]}\x01301\x02{p}\x031.0{x}\n"
            out.append(f"{s},{c},{b},{body}")
            noise_id = noise_after.get(sl.start + j)
            if noise_id is not None:
                out.append(f"{noise_id},0,1,{body}")
        return "".join(out)

    def session_key(self, session: int) -> str:
        day = f":{self.day}" if self.day else ""  # sessions of different days never collide
        return hashlib.md5(f"aliccp-synthetic:{self.seed}{day}:{session}".encode()).hexdigest()

    def common_lines(self, sessions: np.ndarray, users: np.ndarray) -> str:
        us, num = self.user_str, self.user_num
        return "".join(
            f"{self.session_key(s)},{num[u]},{us[u]}\n"
            for s, u in zip(sessions.tolist(), users.tolist(), strict=True)
        )


def _rates(click: np.ndarray, buy: np.ndarray) -> dict:
    n, n_click, n_buy = len(click), int(click.sum()), int(buy.sum())
    return {
        "clicks": n_click,
        "buys": n_buy,
        "ctr": n_click / max(1, n),
        "cvr_among_clicks": n_buy / max(1, n_click),
        "ctcvr": n_buy / max(1, n),
    }


def generate(
    out_dir,
    n_train: int,
    seed: int = 0,
    fmt: str = "slot",
    test_ratio: float = 0.25,
    files: int = 1,
    preset: str = "default",
    split_dirs: tuple[str, str] = ("train_data", "test_data"),
    verbose: bool = False,
    day: int = 0,
    **params,
) -> dict:
    """Write a synthetic Ali-CCP train/test pair to ``out_dir``; returns the meta dict written.

    ``day``: the same world (users, items, tastes: everything drawn from ``seed``, ``n_train``,
    the preset and ``params``, so keep those equal) on another day: new sessions, impressions and
    labels, sample ids from ``day * DAY_ID_STRIDE + 1``.
    Consecutive days are the data of day-by-day training (README, "Day by day").

    ``params`` override the preset's generator parameters (see ``PARAMS``); ``fmt`` is ``"slot"``
    (``files`` parts per split, in ``out_dir/split_dirs[0]`` and ``out_dir/split_dirs[1]``) or
    ``"raw"`` (one skeleton and one common-features file per split).
    """
    t0 = time.time()
    _check_arguments(n_train, fmt, test_ratio, files, day)
    p = resolve_params(n_train, preset, **params)
    n_test = int(round(n_train * test_ratio))
    log = print if verbose else (lambda *a, **k: None)

    universe = Universe(p, seed)
    intercepts = _calibrate(universe, seed)
    log(f"world ready ({time.time() - t0:.1f}s): alpha_ctr={intercepts[0]:.3f} "
        f"alpha_cvr={intercepts[1]:.3f}")  # fmt: skip
    drawn = _draw_impressions(universe, seed, day, n_train + n_test, intercepts)

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    writer = Writer(universe, fmt, seed, day)
    meta = _meta(writer, p, intercepts, seed=seed, day=day, preset=preset, n_train=n_train,
                 test_ratio=test_ratio, files=files)  # fmt: skip
    first_id = day * DAY_ID_STRIDE
    noise = _NoiseIds(_rng(seed, "noise", day), first_id + n_train + n_test + 1, p["noise_rate"])
    bounds = {"train": (0, n_train), "test": (n_train, n_train + n_test)}
    for split, split_dir in zip(("train", "test"), split_dirs, strict=True):
        lo, hi = bounds[split]
        rows = _split_rows(drawn, first_id, lo, hi)
        info = _split_info(drawn, first_id, lo, hi)
        if fmt == "slot":
            info["files"] = _write_slot(out, split_dir, files, writer, rows)
        else:
            info.update(_write_raw(out, split, writer, rows, noise))
        _write_truth(out / f"truth_{split}.csv", rows["sample_id"], drawn, lo, hi)
        meta["splits"][split] = info
        log(f"{split}: {hi - lo} rows, ctr={info['ctr']:.4f} "
            f"cvr|click={info['cvr_among_clicks']:.4f} oracle auc {info['oracle_auc']} "
            f"({time.time() - t0:.1f}s)")  # fmt: skip
    with open(out / "meta.json", "w", encoding="utf-8", newline="\n") as fh:
        json.dump(meta, fh, indent=2)
        fh.write("\n")
    return meta


def _check_arguments(n_train, fmt, test_ratio, files, day):
    if fmt not in ("slot", "raw"):
        raise ValueError(f"fmt must be 'slot' or 'raw', not {fmt!r}")
    if n_train < 1 or files < 1 or test_ratio < 0 or day < 0:
        raise ValueError("need n_train >= 1, files >= 1, test_ratio >= 0, day >= 0")


def _draw_impressions(universe: Universe, seed: int, day: int, n: int, intercepts) -> dict:
    """A day's `n` impressions (train then test): sessions, users, items, features, the true
    probabilities (rounded as written), labels and the entire-space conversions."""
    a_ctr, a_cvr = intercepts
    rng = _rng(seed, "timeline", day)
    session, users = _timeline(universe, n, rng)
    items = universe.sample_items(users, rng)
    feats = _features(universe, users, items, rng)
    pctr = np.round(_sigmoid(a_ctr + feats.pop("click_logit")), 8)
    pcvr = np.round(_sigmoid(a_cvr + feats.pop("buy_logit")), 8)
    lab = _rng(seed, "labels", day)
    click = lab.random(n) < pctr
    buy = click & (lab.random(n) < pcvr)
    entire = _rng(seed, "entire", day).random(n) < pcvr
    return {"session": session, "users": users, "items": items, "feats": feats, "pctr": pctr,
            "pcvr": pcvr, "click": click, "buy": buy, "entire": entire}  # fmt: skip


def _meta(writer: Writer, p: dict, intercepts, *, seed, day, preset, n_train, test_ratio, files):
    """meta.json before its splits: how the data was made and the slot feasign ranges."""
    ranges = writer.ranges
    return {
        "generator": "datasets/ali-ccp/synthetic.py",
        "format": writer.fmt,
        "seed": seed,
        **({"day": day} if day else {}),  # day 0's meta stays as the single-day generator's
        "preset": preset,
        "n_train": n_train,
        "test_ratio": test_ratio,
        "files": files,
        "params": p,
        "intercepts": {"ctr": intercepts[0], "cvr": intercepts[1]},
        "fields": list(FIELDS),
        # raw output keeps raw per-field ids; these two keys then describe the slot equivalent
        "sparse_feature_number": ranges[FIELDS[-1]][1] + 1,
        "field_ranges": {f: list(r) for f, r in ranges.items()},
        "splits": {},
    }


def _split_rows(drawn: dict, first_id: int, lo: int, hi: int) -> dict:
    """The columns `Writer` formats, for impressions lo..hi-1 of the day."""
    feats = drawn["feats"]
    return {
        "sample_id": np.arange(first_id + lo + 1, first_id + hi + 1),
        "click": drawn["click"][lo:hi].astype(np.int8),
        "buy": drawn["buy"][lo:hi].astype(np.int8),
        "user": drawn["users"][lo:hi],
        "item": drawn["items"][lo:hi],
        "position": feats["position"][lo:hi],
        "session": drawn["session"][lo:hi],
        "cross": {f: c[lo:hi] for f, c in feats["cross"].items()},
    }


def _split_info(drawn: dict, first_id: int, lo: int, hi: int) -> dict:
    """A split's rates, its oracle AUCs (the true probabilities as scores) and expected rates."""
    c, b = drawn["click"][lo:hi], drawn["buy"][lo:hi]
    pc, pv = drawn["pctr"][lo:hi], drawn["pcvr"][lo:hi]
    info = {"rows": hi - lo, "first_sample_id": first_id + lo + 1, **_rates(c, b)}
    info["oracle_auc"] = {
        "ctr": auc(pc, c),
        "cvr": auc(pv[c], b[c]),
        "ctcvr": auc(pc * pv, b),
        "cvr_entire_space": auc(pv, drawn["entire"][lo:hi]),
    }
    info["expected"] = {"ctr": float(pc.mean()) if hi > lo else None,
                        "cvr_among_clicks": float((pc * pv).sum() / max(pc.sum(), _TINY))}  # fmt: skip
    return info


def _write_slot(out: Path, split_dir: str, files: int, writer: Writer, rows: dict) -> list[str]:
    """The split as `files` slot parts of about equal rows; returns their names."""
    names = []
    (out / split_dir).mkdir(exist_ok=True)
    n = len(rows["sample_id"])
    bounds = np.linspace(0, n, files + 1).round().astype(int)
    for part in range(files):
        name = f"{split_dir}/part-{part:05d}.txt"
        names.append(name)
        with open(out / name, "w", encoding="utf-8", newline="\n") as fh:
            for s in range(bounds[part], bounds[part + 1], CHUNK_ROWS):
                fh.write(writer.slot_lines(rows, slice(s, min(s + CHUNK_ROWS, bounds[part + 1]))))
    return names


class _NoiseIds:
    """Where raw output inserts its click=0,buy=1 noise rows, and their sample ids: after the
    day's impressions, numbered on across the splits."""

    def __init__(self, rng: np.random.Generator, next_id: int, rate: float):
        self.rng, self.next_id, self.rate = rng, next_id, rate

    def place(self, n: int) -> dict[int, int]:
        """{row after which a noise row goes: its sample id} for a split of `n` rows."""
        n_noise = max(3, int(round(self.rate * n))) if n else 0
        after = np.sort(self.rng.choice(n, size=min(n_noise, n), replace=False)) if n else []
        noise_after = {int(j): self.next_id + t for t, j in enumerate(after)}
        self.next_id += len(noise_after)
        return noise_after


def _write_raw(out: Path, split: str, writer: Writer, rows: dict, noise: _NoiseIds) -> dict:
    """The split as a raw skeleton (with noise rows) and its sessions' common features; returns
    what meta.json says of them."""
    n = len(rows["sample_id"])
    noise_after = noise.place(n)
    info = {"noise_rows": len(noise_after), "noise_sample_ids": sorted(noise_after.values())}
    with open(out / RAW_SKELETON.format(split), "w", encoding="utf-8", newline="\n") as fh:
        for s in range(0, n, CHUNK_ROWS):
            fh.write(writer.raw_lines(rows, slice(s, min(s + CHUNK_ROWS, n)), noise_after))
    sessions, first = np.unique(rows["session"], return_index=True)
    with open(out / RAW_COMMON.format(split), "w", encoding="utf-8", newline="\n") as fh:
        for s in range(0, len(sessions), CHUNK_ROWS):
            sl = slice(s, s + CHUNK_ROWS)
            fh.write(writer.common_lines(sessions[sl], rows["user"][first[sl]]))
    info["common_feature_rows"] = len(sessions)
    info["files"] = [RAW_SKELETON.format(split), RAW_COMMON.format(split)]
    return info


def _write_truth(path: Path, sample_id, drawn: dict, lo: int, hi: int):
    """`sample_id,pctr,pcvr` of each impression: the oracle's scores."""
    pc, pv = drawn["pctr"][lo:hi], drawn["pcvr"][lo:hi]
    with open(path, "w", encoding="utf-8", newline="\n") as fh:
        fh.write("sample_id,pctr,pcvr\n")
        for s in range(0, hi - lo, CHUNK_ROWS * 5):
            sl = slice(s, min(s + CHUNK_ROWS * 5, hi - lo))
            fh.write("".join(
                f"{i},{a:.8f},{v:.8f}\n"
                for i, a, v in zip(sample_id[sl].tolist(), pc[sl].tolist(), pv[sl].tolist(), strict=True)
            ))  # fmt: skip


def _param_type(name: str):
    default = PARAMS[name][0]
    return float if isinstance(default, float) else int


def main(argv=None) -> dict:
    presets = "\n".join(
        f"  {name}: " + (", ".join(f"{k}={v}" for k, v in values.items()) or "the defaults below")
        for name, values in PRESETS.items()
    )
    params = "\n".join(
        f"  --{n.replace('_', '-'):24s}{h}" + ("" if d is None else f" [default preset: {d}]")
        for n, (d, h) in PARAMS.items()
    )
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=f"presets (--preset NAME):\n{presets}\n\ngenerator parameters "
        f"(override the preset):\n{params}\n\nThe generative process is described in the module "
        "docstring of datasets/ali-ccp/synthetic.py.",
    )
    parser.add_argument(
        "--n", type=int, default=1_000_000, help="train impressions (default 1000000)"
    )
    parser.add_argument("--out", required=True, help="output directory")
    parser.add_argument(
        "--seed", type=int, default=0, help="random seed; same seed, same bytes (default 0)"
    )
    parser.add_argument("--format", choices=("slot", "raw"), default="slot",
                        help="slot: PaddleRec slot files; raw: Tianchi skeleton/common-features CSVs")  # fmt: skip
    parser.add_argument(
        "--test-ratio", type=float, default=0.25, help="test rows per train row (default 0.25)"
    )
    parser.add_argument(
        "--files", type=int, default=1, help="slot format: part files per split (default 1)"
    )
    parser.add_argument(
        "--train-dir",
        default="train_data",
        help="slot format: train folder in OUT (default train_data)",
    )
    parser.add_argument(
        "--test-dir",
        default="test_data",
        help="slot format: test folder in OUT (default test_data)",
    )
    parser.add_argument(
        "--preset", choices=sorted(PRESETS), default="default", help="parameter preset (see below)"
    )
    parser.add_argument(
        "--day", type=int, default=0,
        help="another day of the same world (same --seed, --n, preset and parameters): new "
        "impressions and labels, the same users and items (default 0)",
    )  # fmt: skip
    parser.add_argument("--quiet", action="store_true", help="print nothing but errors")
    group = parser.add_argument_group(
        "generator parameters (see the list below; default: the preset's value)"
    )
    for name in PARAMS:
        group.add_argument(f"--{name.replace('_', '-')}", dest=name, type=_param_type(name), default=None,
                           help=argparse.SUPPRESS)  # fmt: skip
    args = parser.parse_args(argv)
    overrides = {n: getattr(args, n) for n in PARAMS if getattr(args, n) is not None}
    t0 = time.time()
    meta = generate(args.out, args.n, seed=args.seed, fmt=args.format, test_ratio=args.test_ratio,
                    files=args.files, preset=args.preset, split_dirs=(args.train_dir, args.test_dir),
                    verbose=not args.quiet, day=args.day, **overrides)  # fmt: skip
    if not args.quiet:
        print(f"wrote {args.out} in {time.time() - t0:.1f}s; "
              f"sparse_feature_number={meta['sparse_feature_number']}")  # fmt: skip
    return meta


if __name__ == "__main__":
    main(sys.argv[1:])
