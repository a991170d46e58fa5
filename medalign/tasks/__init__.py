"""What users run on a trained model: zero-shot diagnosis, retrieval, embeddings."""
