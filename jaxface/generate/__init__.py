"""`jaxface generate`, the application over cgmm/ (targets) and invert/ (feature inversion):
settings, classifier, targets, rendering, output, reconstruct, sweep, command."""
