"""Evaluation: accuracy, blocks and FLOPs (evaluate, accounting), paired statistics (stats),
timing and memory (timing, memory), plots."""
