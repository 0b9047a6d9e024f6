"""Training the bundled models (tiny from scratch; stage 1 on a frozen LLM) and the caption-quality check."""
