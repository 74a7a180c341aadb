"""geossl: self-supervised pretraining of Earth-observation foundation models in JAX."""

__version__ = "0.1.0"
