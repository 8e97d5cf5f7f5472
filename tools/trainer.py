"""Train a model with the dygraph engine.

python tools/trainer.py -m models/multitask/esmm/config.yaml [-o section.key=value ...]
"""

import sys

from paddle_rec_zoo.cli import main

if __name__ == "__main__":
    sys.exit(main("trainer"))
