"""Keras model builders, losses, metrics and callbacks of image-toolkit.

Modules that need TensorFlow import it through `models.runtime`, which keeps
its start-up noise quiet; `models.names` imports nothing, so the command line
can offer the choices without loading TensorFlow.
"""
