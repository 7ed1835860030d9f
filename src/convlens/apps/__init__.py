"""The faces over the library: the command line (:mod:`.cli`), the explorer (:mod:`.server`),
HTML reports and the demo. Thin layers: what they compute comes from the layers below."""
