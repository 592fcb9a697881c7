"""SegCompass: the model side — backbones, synthetic world, concept interface, head, training, metrics."""

__version__ = "0.1.0"
