"""Storage: reading and writing through fsspec, image formats, mask and outline export.

Also the output lease (one writer per output folder).
"""
