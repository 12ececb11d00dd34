"""segflow's engine: decoding, normalisation, tiled prediction, post-processing, measurement.

No Prefect here: everything works from a notebook, e.g.::

    from segmodel.api import segment
    labels, table = segment(image)
"""

__version__ = "0.1.0"
