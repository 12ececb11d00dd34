"""The segmentation network: a lean U-Net builder.

The network maps a normalised ``(H, W, 3)`` image to three maps in [0, 1] (:data:`OUTPUTS`):

- ``foreground``: probability that a pixel belongs to a nucleus;
- ``boundary``: probability that a pixel lies on a nucleus' outline (where touching nuclei meet);
- ``distance``: distance to the nucleus' own border, divided by its maximum inside that nucleus
  (1 at each nucleus' centre, falling to 0 at its edge; 0 on background).

:mod:`segmodel.inference.postprocess` turns them into instance labels by marker-controlled
watershed.
"""



def _conv_block(x, filters, name):
    """Two 3x3 convolutions, each with batch normalisation and ReLU."""
    from keras import layers

    for i in (1, 2):
        x = layers.Conv2D(filters, 3, padding="same", use_bias=False, name=f"{name}_conv{i}")(x)
        x = layers.BatchNormalization(name=f"{name}_bn{i}")(x)
        x = layers.Activation("relu", name=f"{name}_relu{i}")(x)
    return x


def build_unet(*, channels=3, filters=(16, 32, 64, 128), bottleneck=256, name="nuclei_unet",
               outputs=3, activation="sigmoid"):
    """Build a U-Net with ``len(filters)`` 2x downsamplings and ``outputs`` output maps.

    Every layer is named from its block (``enc0_conv1``, ``dec2_up``, ``maps``, ...).

    Parameters
    ----------
    channels : int, optional
        Input channels (default 3).
    filters : tuple of int, optional
        Filters per encoder level (default ``(16, 32, 64, 128)``); the input size must be a
        multiple of ``2**len(filters)``.
    bottleneck : int, optional
        Filters at the lowest resolution (default 256).
    name : str, optional
        The model's name (default ``"nuclei_unet"``).
    outputs : int, optional
        Output channels (default 3: the maps of :data:`OUTPUTS`, in that order).
    activation : str, optional
        Their activation (default ``"sigmoid"``; ``"softmax"`` for a semantic model).

    Returns
    -------
    keras.Model
        Input ``(None, None, channels)``, output ``(None, None, outputs)`` in float32.

    Raises
    ------
    ValueError
        If ``channels < 1``, or ``filters`` is empty or holds a value below 1.
    """
    import keras
    from keras import layers

    if channels < 1:
        raise ValueError(f"channels must be >= 1. Received: channels={channels}")
    if not filters or any(f < 1 for f in filters):
        raise ValueError(f"filters must be a non-empty tuple of positive ints. Received: {filters}")
    inputs = keras.Input((None, None, channels), name="image")
    x, skips = inputs, []
    for level, f in enumerate(filters):
        x = _conv_block(x, f, f"enc{level}")
        skips.append(x)
        x = layers.MaxPooling2D(2, name=f"enc{level}_pool")(x)
    x = _conv_block(x, bottleneck, "bottleneck")
    for level in reversed(range(len(filters))):
        f = filters[level]
        x = layers.Conv2DTranspose(f, 2, strides=2, padding="same", name=f"dec{level}_up")(x)
        x = layers.Concatenate(name=f"dec{level}_concat")([x, skips[level]])
        x = _conv_block(x, f, f"dec{level}")
    maps = layers.Conv2D(outputs, 1, activation=activation, name="maps", dtype="float32")(x)
    return keras.Model(inputs, maps, name=name)
