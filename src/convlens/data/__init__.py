"""Data that ships with convlens: class lists, colour maps, sample photos, shipped model
weights (``models/``), and the synthetic :mod:`convlens.data.toons` data set."""
