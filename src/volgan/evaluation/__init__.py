"""Evaluation of trained generators: metrics, a feature/judge classifier, and their reports."""
