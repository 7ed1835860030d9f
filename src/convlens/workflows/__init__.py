"""Work that combines the methods: explanation metrics and evaluation, sanity checks, training.
Imports :mod:`convlens.core` and :mod:`convlens.techniques`, never :mod:`convlens.apps`."""
