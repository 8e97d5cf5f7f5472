"""Model building blocks: layers, feature inputs, embedding tables and their row-wise optimizers,
optimizers, CTR/CVR towers, experts, and the model contract (`Model`, `ModelSpec`).

Imports nothing from `paddle_rec_zoo.data` or `paddle_rec_zoo.run` (tests/test_layout.py).
"""
