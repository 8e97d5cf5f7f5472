"""Evaluate saved checkpoints with the static engine or an exported inference model.

python tools/static_infer.py -m models/multitask/esmm/config.yaml [-o section.key=value ...]
"""

from paddle_rec_zoo.run.cli import finish, main

if __name__ == "__main__":
    finish(main("static_infer"))
