"""What training, evaluation and export share about a run: its configuration and flags
(`config`), the network and optimizer built from it (`builders`), the distribution
strategy (`strategy`), checkpoints (`checkpoints`) and rebuilding a run from its
model_dir (`restore`)."""
