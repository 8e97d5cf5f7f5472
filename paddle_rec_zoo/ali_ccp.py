"""Ali-CCP: the one definition of its fields (their meanings: doc/data.md, "The 23 fields")."""

from __future__ import annotations

# The 23 Ali-CCP fields in PaddleRec's order (user id, user histories, user profile, item,
# crosses, context): the model's field list. The raw converter numbers feasigns in an order
# derived from this one (`datasets/ali-ccp/vocabulary.py: feasign_order`).
FIELDS = (
    "101", "109_14", "110_14", "127_14", "150_14", "121", "122", "124", "125", "126", "127",
    "128", "129", "205", "206", "207", "210", "216", "508", "509", "702", "853", "301",
)  # fmt: skip
