"""Benchmarks of rpn-preprocess and the trainer's input (`make bench`, see BENCHMARKS.md)."""
