"""Pretraining with Lightning: config, module, run folder and export."""
