"""Running: config, the command line, engines, the training and evaluation loops, checkpoints,
warm starts, distributed training, signals and the process's runtime settings."""
