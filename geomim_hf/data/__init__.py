"""Data: the synthetic driving world, dataset formats, loaders and targets."""
