"""Phantom data sets written as real DICOM series with free-text reports (demo and tests)."""
