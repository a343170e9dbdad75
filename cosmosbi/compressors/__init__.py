"""Neural compressors and classic summaries (power spectra, peaks)."""
