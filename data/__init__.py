"""Dataset preparation commands (the data files themselves are git-ignored under ``datasets/``)."""
