"""Evaluate saved checkpoints with the static engine or an exported inference model.

python tools/static_infer.py -m models/multitask/esmm/config.yaml [-o section.key=value ...]
"""

import sys

from paddle_rec_zoo.cli import main

if __name__ == "__main__":
    sys.exit(main("static_infer"))
