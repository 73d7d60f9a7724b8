"""Models, layer 2: `factory` (the smp factory) and `checkpoints` (the self-describing file format)."""
