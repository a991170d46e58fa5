"""Datasets and loaders over a prepared dataset folder."""
