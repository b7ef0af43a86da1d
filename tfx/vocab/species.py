"""Species known to tfx: name -> gene embedding file name. Plugins may register more."""

from __future__ import annotations

from dataclasses import dataclass

from tfx.registry import SPECIES


@dataclass(frozen=True)
class Species:
    name: str  # snake_case binomial, as in the official file names
    common_name: str

    @property
    def gene_file(self) -> str:
        return f"{self.name}_gene.h5"


# The twelve species of TF-Metazoa.
for _name, _common in [
    ("homo_sapiens", "human"),
    ("mus_musculus", "mouse"),
    ("oryctolagus_cuniculus", "rabbit"),
    ("gallus_gallus", "chicken"),
    ("xenopus_laevis", "African clawed frog"),
    ("danio_rerio", "zebrafish"),
    ("lytechinus_variegatus", "sea urchin"),
    ("caenorhabditis_elegans", "C. elegans"),
    ("drosophila_melanogaster", "fruit fly"),
    ("spongilla_lacustris", "freshwater sponge"),
    ("saccharomyces_cerevisiae", "yeast"),
    ("plasmodium_falciparum", "malaria parasite"),
]:
    SPECIES.register(_name, Species(_name, _common))


def species_for_file(file_name: str) -> str:
    """'mus_musculus_gene.h5' -> 'mus_musculus'."""
    return file_name.removesuffix(".h5").removesuffix("_gene")
