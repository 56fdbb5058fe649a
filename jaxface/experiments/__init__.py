"""Experiment protocols that train and evaluate several models (applications over train/ and evaluate/)."""
