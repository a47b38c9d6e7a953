"""Evaluation: overlap and surface metrics, scoring cases against ground truth, reports."""
