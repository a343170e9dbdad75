"""cosmosbi: simulation-based inference for galaxy surveys.

Simulators produce mock observations, compressors turn them into summaries, estimators
turn summaries into posteriors, and analyses check whether those posteriors can be trusted.
"""

__version__ = "0.1.0"
