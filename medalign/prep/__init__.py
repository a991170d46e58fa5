"""Preparation: volumes and reports into a dataset (manifest, cached volumes, labels)."""
