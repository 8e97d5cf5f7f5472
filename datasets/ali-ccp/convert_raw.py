#!/usr/bin/env python3
"""Convert the raw Ali-CCP files into the binary data set (or slot text) the trainers read.

    python datasets/ali-ccp/convert_raw.py --raw RAW_DIR --out OUT_DIR [options]

The converter is `paddle_rec_zoo.data.ali_ccp.convert` (its docstring and `--help` say more).
"""

import sys

from paddle_rec_zoo.data.ali_ccp.convert import main

if __name__ == "__main__":
    sys.exit(main())
