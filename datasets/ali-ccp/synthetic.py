#!/usr/bin/env python3
"""Deterministic synthetic Ali-CCP: impressions with known true pCTR and pCVR.

    python datasets/ali-ccp/synthetic.py --n 1000000 --out data/synthetic --seed 0

The generator is `paddle_rec_zoo.data.ali_ccp.synthetic` (its docstring and `--help` say more;
from Python: `from paddle_rec_zoo.data.ali_ccp import synthetic; synthetic.generate(...)`).
"""

import sys

from paddle_rec_zoo.data.ali_ccp.synthetic import main

if __name__ == "__main__":
    main(sys.argv[1:])
