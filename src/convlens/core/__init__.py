"""The core: pictures, model handles (classifier, detector), naming, hooks, the layer table,
model files and the zoo, rendering. Imports nothing from the layers above it
(:mod:`convlens.techniques`, :mod:`convlens.workflows`, :mod:`convlens.apps`)."""
