"""Report text to findings: vocabulary, sentence context, labeling, de-identification (no volumes here)."""
