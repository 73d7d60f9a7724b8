"""Training, layer 6: `config` (RunConfig, one run's settings, and the rules of resume and fine-tune), `losses`,
`precision` (mixed precision, batch checks, BatchNorm mode), `run_log` (results.csv, plots, previews, wandb)."""
