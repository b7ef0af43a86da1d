"""Sampling cells from a checkpoint and answering prompts (see docs/generation.md).

``sample``: the ancestral sampler with a key/value cache; ``run``: `tfx generate`'s h5ad;
``score``: cells scored in a given order; ``prompt``: next gene, gene-gene, cell-type programmes.
"""
