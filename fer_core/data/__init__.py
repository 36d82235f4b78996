"""Data sets: WebDataset shards with a dataset.json manifest, packed from the formats users download."""
