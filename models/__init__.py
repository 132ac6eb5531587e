"""Keras model builders, losses, metrics, callbacks, tf.data pipelines and the runs of image-toolkit.

Modules that need TensorFlow import it through `image_toolkit.models.runtime`,
which keeps its start-up noise quiet. The option choices live in
`image_toolkit.data_tools.names`, which imports nothing, so the command line
can offer them without loading TensorFlow.
"""
