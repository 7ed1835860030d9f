"""The methods: attribution (one module per family), activations, filter views, feature
visualization and concept tests. They import :mod:`convlens.core` and each other, never the
layers above (:mod:`convlens.workflows`, :mod:`convlens.apps`)."""
