"""Evaluation, layer 4: `metrics` (confusion counts, Dice and IoU, early stopping) and `scoring` (a model over a
split -> metrics, each image scored at its own size)."""
