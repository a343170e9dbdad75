"""Validation analyses, reports and the staged pipeline."""
