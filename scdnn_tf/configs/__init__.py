"""Training recipes as absl flagfiles (`--flagfile=PATH`, or `--config=NAME` from any folder)."""
