"""Reading data, layer 1: what an image and a mask are and where a run's files come from. `imaging` (image files,
upright and 8-bit; letterbox, normalize), `masks` (what mask values mean), `classes` (class names, colours),
`splits` (split files, --search-files), `sources` (what a --source is), `coco` (COCO JSON in and out),
`polygons` (regions of a mask), `cache` (the decode cache), `augment`, `loaders` (DataLoaders, evaluation
samples). Imports only errors, cli and distributed."""
