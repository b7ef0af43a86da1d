"""The one checkpoint format (the official release layout), for everything tfx reads and writes.

``DIR/config.json``, ``DIR/model_weights.pt`` (a plain state_dict, loaded with weights_only),
``DIR/vocabs/<species>_gene.h5`` and ``DIR/vocabs/<column>_vocab.json``; a fine-tuned one adds its
task head, and may hold LoRA adapters beside a base checkpoint instead of weights
(``tfx.checkpoint.finetuned``).
"""

from tfx.checkpoint.finetuned import Task
from tfx.checkpoint.io import Checkpoint, CheckpointError, check_output_dir, load_checkpoint, save_checkpoint

__all__ = ["Checkpoint", "CheckpointError", "Task", "check_output_dir", "load_checkpoint", "save_checkpoint"]
