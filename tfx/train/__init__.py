"""Training with Lightning (and DeepSpeed ZeRO): objectives, strategies, loggers, callbacks, export."""
