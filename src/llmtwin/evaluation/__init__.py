"""Evaluation: metrics, judges, benchmarks and reports."""
