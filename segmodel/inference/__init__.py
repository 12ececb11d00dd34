"""Image to labels: preprocessing, tiled prediction, post-processing, heads, automatic scale.

Also measurement, block-wise prediction of huge images and the worker pools.
"""
