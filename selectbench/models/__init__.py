"""Model specs and loading (Hugging Face ids, local folders, GGUF files, built-in aliases) and engines."""
