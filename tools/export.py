"""Write a checkpoint's inference.onnx (ONNX, through paddle2onnx), and its Paddle Inference model
when it has none (dygraph checkpoints). See doc/inference.md.

python tools/export.py -m models/multitask/esmm/config.yaml -o runner.infer_load_path=RUN [runner.infer_start_epoch=N]
"""

from paddle_rec_zoo.run.cli import finish, main

if __name__ == "__main__":
    finish(main("export"))
