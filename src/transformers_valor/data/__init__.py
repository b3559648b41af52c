"""Datasets, collators and the synthetic audiovisual captioning corpus."""
