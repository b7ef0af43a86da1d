"""Reading and writing cells: AnnData, TileDB-SOMA, WebDataset shards and the streaming loader."""

MAX_COUNT = 1e9  # no raw count of one gene in one cell comes near; 1e30 is a unit or scaling mistake
