"""Training the nuclei model: targets, augmentation, a resumable training loop, threshold tuning.

The settings are :class:`TrainConfig`, declared once: ``segflow train`` (a Prefect flow around
:func:`train`) takes them as options, or call :func:`train` with one.
"""

import itertools
import json
import time
from dataclasses import replace
from pathlib import Path
from typing import Literal, Optional

import numpy as np
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    NonNegativeFloat,
    PositiveFloat,
    PositiveInt,
    field_validator,
    model_validator,
)
from scipy import ndimage as ndi
from skimage.segmentation import find_boundaries

from segmodel.evaluation.metrics import score_image
from segmodel.inference.autoscale import median_diameter, working_sizes
from segmodel.inference.passes import Prepared, default_tiling, finish, predict_labels, prepare
from segmodel.inference.predict import predict_maps
from segmodel.inference.preprocess import resize
from segmodel.model.keras_import import import_keras
from segmodel.model.loading import save_model
from segmodel.model.spec import ModelSpec, PostprocessSettings
from segmodel.model.unet import build_unet
from segmodel.training import datasets


def check_patch(patch, levels):
    """Check that a patch edge fits the U-Net's levels.

    Parameters
    ----------
    patch : int
        Edge of the training patches in pixels.
    levels : int
        The U-Net's levels; it halves a patch ``levels`` times.

    Raises
    ------
    ValueError
        Naming ``--patch``, unless it is a positive multiple of ``2**levels``.
    """
    if patch < 2 ** levels or patch % 2 ** levels:
        raise ValueError(f"--patch must be a multiple of {2 ** levels} with {levels} levels "
                         f"(the network halves it {levels} times). Received: --patch {patch}")


#: Output kinds of a trained model.
Kind = Literal["instances", "binary", "semantic"]


class TrainConfig(BaseModel):
    """Training settings, declared once: typed, validated, each field described.

    The defaults are the recipe's first stage; the shipped model is six stages of it (README, "The
    model": each a warm restart, at the images' own scale). The ``train-model`` flow's parameters
    extend this model and ``segflow train``'s options are generated from it, each field's
    description its help; fields marked ``json_schema_extra={"cli": False}`` are settings of the
    recipe that have no option.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    data_dir: Optional[str] = Field(
        None, description="DSB2018-style dataset folder (default: ../shared/data/dsb2018 beside "
        "the repository).")
    steps: int = Field(2600, ge=1, description="Training steps (batches).")
    steps_per_epoch: int = Field(100, ge=1, description="Steps between checkpoints.")
    batch_size: int = Field(16, ge=1, description="Patches per training step.")
    patch: int = Field(128, ge=1, description="Edge of the training patches in pixels (a "
                       "multiple of 2**levels: 16 with 4 levels).")
    learning_rate: float = Field(2e-3, gt=0, description="Peak learning rate (cosine decay).")
    warmup_steps: int = Field(
        100, ge=0, json_schema_extra={"cli": False},
        description="Steps of linear learning-rate warm-up (at most a quarter of steps).")
    filters: tuple[PositiveInt, ...] = Field(
        (16, 32, 64, 128), min_length=1, max_length=6,
        description="Filters per U-Net level (one level per entry; with init, the levels a "
        "deeper network shares with that model start from its weights).")
    bottleneck: int = Field(128, ge=1, description="Filters at the U-Net's lowest resolution.")
    object_diameter: float = Field(
        24.0, ge=0, description="Resize training images to this median nucleus diameter in "
        "pixels (before the scale jitter of scale_range); automatic scale does the same at "
        "inference (0: train at the images' own scale, and record the training images' range "
        "of sizes as the working range).")
    scale_range: tuple[PositiveFloat, PositiveFloat] = Field(
        (0.6, 1.7), json_schema_extra={"cli": False},
        description="Range of the random factor (log-uniform) each patch's scale is multiplied "
        "by.")
    foreground_crop_fraction: float = Field(
        0.8, ge=0, le=1, json_schema_extra={"cli": False},
        description="Share of patches centred near a nucleus (the others anywhere).")
    modality_weights: dict[str, NonNegativeFloat] = Field(
        default_factory=lambda: {"fluorescence": 0.5, "histology": 0.35, "brightfield": 0.15},
        json_schema_extra={"cli": False},
        description="Relative share of patches from each modality's images (0.1 for a modality "
        "not named).")
    seed: int = Field(0, ge=0, description="Seed of patch sampling and augmentation.")
    init: str = Field("", description="Start from this .keras model's weights ('' = random): "
                      "every layer with the same name and shapes is copied.")
    tune_images: int = Field(0, ge=0, json_schema_extra={"cli": False},
                             description="Images of the tune split to tune on (0: every one).")
    train_images: int = Field(0, ge=0, json_schema_extra={"cli": False},
                              description="Images of the train split to train on (0: every one).")
    kind: Kind = Field(
        "instances", description="Output kind of the trained model bundle: 'instances' (the "
        "shipped head), 'binary' (foreground) or 'semantic' (classes background / interior / "
        "boundary, derived from the instance labels).")
    images_dir: Optional[str] = Field(
        None, description="Your own images (instead of data_dir), paired by file stem with "
        "labels_dir.")
    labels_dir: Optional[str] = Field(None, description="Instance label images of images_dir.")
    name: str = Field("", description="The bundle's name ('' = '<kind>-unet').")
    contact_weight: float = Field(
        0.0, ge=0, description="Extra loss weight on pixels where two nuclei touch, where "
        "merges start: each such pixel counts 1 + contact_weight times (0: every pixel alike; "
        "instance models only).")
    contact_radius: int = Field(
        2, ge=1, json_schema_extra={"cli": False},
        description="Pixels within this distance (a square window) of two different nuclei, "
        "gaps between them included, are where they touch.")

    @model_validator(mode="after")
    def _patch_fits_the_levels(self):
        check_patch(self.patch, len(self.filters))
        return self

    @field_validator("labels_dir")
    @classmethod
    def _labels_with_images(cls, value, info):
        if value and not info.data.get("images_dir"):
            raise ValueError("labels_dir needs images_dir (the images the labels belong to).")
        return value


#: Classes of a semantic model trained from instance labels, in output-channel order.
SEMANTIC_CLASSES = ("background", "interior", "boundary")


def make_targets(labels):
    """Training targets of the instances head from instance labels.

    Parameters
    ----------
    labels : (H, W) int ndarray
        Instance labels (0 = background).

    Returns
    -------
    (H, W, 3) float32 ndarray
        Foreground, inner boundary, and the distance to the object's border divided by its
        maximum.
    """
    fg = labels > 0
    boundary = find_boundaries(labels, mode="inner") & fg
    dist = np.zeros(labels.shape, np.float32)
    for i, sl in enumerate(ndi.find_objects(labels), start=1):
        if sl is None:
            continue
        sl = tuple(slice(max(s.start - 1, 0), s.stop + 1) for s in sl)
        obj = labels[sl] == i
        d = ndi.distance_transform_edt(obj)
        if d.max() > 0:
            dist[sl][obj] = (d / d.max())[obj]
    return np.stack([fg, boundary, dist], axis=-1).astype(np.float32)


def contact_map(labels, radius=2):
    """Pixels within ``radius`` of two different objects, gaps between them included.

    Parameters
    ----------
    labels : (H, W) int ndarray
        Instance labels.
    radius : int, optional
        Half the edge of the square window (default 2).

    Returns
    -------
    (H, W) bool ndarray
    """
    size = 2 * radius + 1
    labels = np.asarray(labels, np.int64)
    big = labels.max(initial=0) + 1  # larger than every label: background in the minimum
    top = ndi.maximum_filter(labels, size=size)
    bottom = ndi.minimum_filter(np.where(labels > 0, labels, big), size=size)
    return (top > 0) & (bottom != big) & (top != bottom)


def kind_targets(labels, kind="instances"):
    """Training targets of an output kind from instance labels.

    Parameters
    ----------
    labels : (H, W) int ndarray
        Instance labels.
    kind : {"instances", "binary", "semantic"}, optional
        The output kind (default "instances").

    Returns
    -------
    (H, W, K) float32 ndarray
        The three maps of :func:`make_targets` (K = 3), the foreground (K = 1), or one-hot
        :data:`SEMANTIC_CLASSES` (K = 3; boundary = each object's inner outline).
    """
    targets = make_targets(labels)
    if kind == "binary":
        return targets[..., :1]
    if kind == "semantic":
        boundary = targets[..., 1] > 0
        interior = (targets[..., 0] > 0) & ~boundary
        background = ~(interior | boundary)
        return np.stack([background, interior, boundary], axis=-1).astype(np.float32)
    return targets


def prepare_image(image, spec=ModelSpec()):
    """Model input for a raw image, prepared exactly as the pipeline prepares it.

    Parameters
    ----------
    image : (H, W) or (H, W, C) ndarray
    spec : segmodel.model.spec.ModelSpec, optional
        Its channels and normalisation are used (default: the nuclei model's).

    Returns
    -------
    (H, W, C') float32 ndarray
    """
    return prepare(image, spec).x


class PatchSampler:
    """Random augmented patches, modality-balanced, biased towards nuclei."""

    def __init__(self, items, config):
        # list of (modality, image (H,W,3), targets (H,W,3), fg coords, median nucleus diameter)
        self.items = items
        self.config = config
        mods = sorted({m for m, *_ in items})
        w = np.array([config.modality_weights.get(m, 0.1) for m in mods], float)
        self.mods, self.mod_p = mods, w / w.sum()
        self.by_mod = {m: [i for i, it in enumerate(items) if it[0] == m] for m in mods}

    def batch(self, rng):
        """A batch of ``config.batch_size`` patches.

        Parameters
        ----------
        rng : numpy.random.Generator

        Returns
        -------
        inputs : (B, P, P, C) float32 ndarray
        targets : (B, P, P, K) float32 ndarray
        """
        xs, ys = zip(*(self.patch(rng) for _ in range(self.config.batch_size)))
        return np.stack(xs), np.stack(ys)

    def patch(self, rng):
        """One augmented patch.

        Parameters
        ----------
        rng : numpy.random.Generator

        Returns
        -------
        input : (P, P, C) float32 ndarray
        target : (P, P, K) float32 ndarray
        """
        cfg = self.config
        mod = self.mods[rng.choice(len(self.mods), p=self.mod_p)]
        modality, image, targets, coords, diameter = self.items[rng.choice(self.by_mod[mod])]
        scale = float(np.exp(rng.uniform(*np.log(cfg.scale_range))))
        if cfg.object_diameter and diameter:
            scale *= cfg.object_diameter / diameter
        crop = max(8, int(round(cfg.patch / scale)))
        both = np.concatenate([image, targets], axis=-1)
        h, w = image.shape[:2]
        if len(coords) and rng.random() < cfg.foreground_crop_fraction:
            cy, cx = coords[rng.integers(len(coords))]
            y0 = int(cy) - crop // 2 + int(rng.integers(-crop // 4, crop // 4 + 1))
            x0 = int(cx) - crop // 2 + int(rng.integers(-crop // 4, crop // 4 + 1))
        else:
            y0 = int(rng.integers(0, max(h - crop, 0) + 1))
            x0 = int(rng.integers(0, max(w - crop, 0) + 1))
        y0 = min(max(y0, 0), max(h - crop, 0))
        x0 = min(max(x0, 0), max(w - crop, 0))
        window = np.zeros((crop, crop, both.shape[-1]), np.float32)
        part = both[y0 : y0 + crop, x0 : x0 + crop]
        window[: part.shape[0], : part.shape[1]] = part
        if crop != cfg.patch:
            zoom = cfg.patch / crop
            window = ndi.zoom(window, (zoom, zoom, 1), order=1, prefilter=False,
                              grid_mode=True, mode="nearest")[: cfg.patch, : cfg.patch]
        window = np.rot90(window, int(rng.integers(4)))
        if rng.random() < 0.5:
            window = window[:, ::-1]
        x, y = window[..., :3].copy(), window[..., 3:].copy()
        return _jitter_intensity(x, modality, rng), y


def _jitter_intensity(x, modality, rng):
    x = np.clip(x, 0, None) ** rng.uniform(0.7, 1.4)
    x = x * rng.uniform(0.75, 1.25) + rng.uniform(-0.1, 0.1)
    if modality != "fluorescence":
        x = x * rng.uniform(0.85, 1.15, size=3)  # stain colour jitter
    if rng.random() < 0.05:
        x = 1.0 - x
    x = x + rng.normal(0, rng.uniform(0, 0.03), size=x.shape)
    return x.astype(np.float32)


def _loss(y_true, y_pred):
    """BCE on the three maps (outline weighted 2) + Dice on the foreground + L1 on the distance.

    A fourth channel of ``y_true``, when present, weights each pixel's BCE and L1 terms
    (:attr:`TrainConfig.contact_weight`).
    """
    from keras import ops

    eps = 1e-6
    weight = y_true[..., 3:4] if y_true.shape[-1] == 4 else None
    y_true = y_true[..., :3]
    y_pred = ops.clip(y_pred, eps, 1 - eps)
    bce = -(y_true * ops.log(y_pred) + (1 - y_true) * ops.log(1 - y_pred))
    bce = bce * ops.convert_to_tensor([1.0, 2.0, 1.0])
    dist_err = ops.abs(y_true[..., 2] - y_pred[..., 2])
    if weight is not None:
        bce, dist_err = bce * weight, dist_err * weight[..., 0]
    fg_t, fg_p = y_true[..., 0], y_pred[..., 0]
    dice = 1 - (2 * ops.sum(fg_t * fg_p) + 1) / (ops.sum(fg_t) + ops.sum(fg_p) + 1)
    return ops.mean(bce) + 0.5 * dice + ops.mean(dist_err)


def _binary_loss(y_true, y_pred):
    from keras import ops

    eps = 1e-6
    y_pred = ops.clip(y_pred, eps, 1 - eps)
    bce = ops.mean(-(y_true * ops.log(y_pred) + (1 - y_true) * ops.log(1 - y_pred)))
    dice = 1 - (2 * ops.sum(y_true * y_pred) + 1) / (ops.sum(y_true) + ops.sum(y_pred) + 1)
    return bce + 0.5 * dice


def _semantic_loss(y_true, y_pred):
    """Cross-entropy over the classes, the boundary class weighted 2."""
    from keras import ops

    y_pred = ops.clip(y_pred, 1e-6, 1.0)
    weights = ops.convert_to_tensor([1.0, 1.0, 2.0])
    return ops.mean(-ops.sum(y_true * ops.log(y_pred) * weights, axis=-1))


LOSSES = {"instances": _loss, "binary": _binary_loss, "semantic": _semantic_loss}


def _build(config):
    outputs = {"instances": 3, "binary": 1, "semantic": len(SEMANTIC_CLASSES)}[config.kind]
    return build_unet(filters=tuple(config.filters), bottleneck=config.bottleneck,
                      outputs=outputs,
                      activation="softmax" if config.kind == "semantic" else "sigmoid")


def _samples(config, split, log=print):
    """The train or tune samples: of ``data_dir``'s fixed split, or of your own folders.

    Own folders use the same hash split, their validation share trained on (score your own
    held-out images with ``segflow evaluate``); with too few images for a train split, all
    of them train.
    """
    limit = {"train": config.train_images, "tune": config.tune_images}[split] or None
    if not config.images_dir:
        return datasets.list_samples(config.data_dir or datasets.DEFAULT_DATA, split)[:limit]
    pairs, unpaired = datasets.list_pairs(config.images_dir, config.labels_dir or
                                          config.images_dir)
    if unpaired and split == "train" and log:
        log(f"{len(unpaired)} images have no label image and are not used: "
            f"{', '.join(unpaired[:5])}{' ...' if len(unpaired) > 5 else ''}")
    tune = [s for s in pairs if datasets.split_of(s.id) == "tune"]
    train = [s for s in pairs if datasets.split_of(s.id) != "tune"] or pairs
    return (train if split == "train" else tune)[:limit]


def _working_sizes(samples):
    """The sidecar's working nucleus size and range from the training images' labels.

    The sidecar's working nucleus size and range from the training images' labels
    (:func:`segmodel.inference.autoscale.working_sizes`).
    """
    return working_sizes(median_diameter(s.load_labels()) for s in samples)


def _load_items(samples, log, kind="instances", contact_weight=0.0, contact_radius=2):
    items = []
    for s in samples:
        image, labels = s.load()
        targets = kind_targets(labels, kind)
        if contact_weight and kind == "instances":
            weight = 1.0 + contact_weight * contact_map(labels, contact_radius)
            targets = np.concatenate([targets, weight[..., None].astype(np.float32)], axis=-1)
        coords = np.argwhere(labels > 0)[::7]
        items.append((s.modality, prepare_image(image), targets, coords, median_diameter(labels)))
    log(f"loaded {len(items)} training images")
    return items


def train(out_dir, config=TrainConfig(), log=print):
    """Train (or resume) a model into ``out_dir`` and save it with its spec.

    Checkpoints after every epoch (``checkpoint.keras`` with optimizer state and
    ``state.json``); calling again with the same ``out_dir`` continues from the last one. An
    instance model's post-processing thresholds are then tuned on the tune split
    (:func:`tune_thresholds`).

    Parameters
    ----------
    out_dir : str or Path
        Folder for the checkpoint, its state and the final model (made if missing).
    config : TrainConfig, optional
        The training settings (default ``TrainConfig()``).
    log : callable, optional
        Receives each progress line (default :func:`print`).

    Returns
    -------
    Path
        The final ``.keras`` file: ``nuclei.keras``, or ``model.keras`` when trained on
        ``config.images_dir``.

    Raises
    ------
    ValueError
        If ``config.init`` shares no layer with the model (when starting afresh).
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    ckpt, state_file = out / "checkpoint.keras", out / "state.json"
    epochs = -(-config.steps // config.steps_per_epoch)
    model, done = _start(config, ckpt, state_file, epochs, log)
    if done < epochs:
        samples = _samples(config, "train", log)
        sampler = PatchSampler(_load_items(samples, log, config.kind, config.contact_weight,
                                           config.contact_radius), config)
        _fit(model, sampler, config, done, epochs, ckpt, state_file, log)
    tune = _samples(config, "tune", log)
    settings = PostprocessSettings()
    if config.kind == "instances" and tune:
        settings = tune_thresholds(model, tune, object_diameter=config.object_diameter, log=log)
    elif config.kind == "instances":
        log("no images in the tune split: default post-processing thresholds")
    spec = _trained_spec(config, settings, tune)
    final = out / ("model.keras" if config.images_dir else "nuclei.keras")
    export = _build(config)
    export.set_weights(model.get_weights())  # weights only: no optimizer state in the shipped file
    save_model(export, spec, final)
    log(f"saved {final}")
    return final


def _start(config, ckpt, state_file, epochs, log):
    """``(model, epochs done)``: resumed from the checkpoint, or built and compiled afresh."""
    keras = import_keras()

    done = 0
    if state_file.exists():  # epochs done, counted in this run's --steps-per-epoch
        state = json.loads(state_file.read_text())
        steps_done = state.get("steps", state["epoch"] * state.get("steps_per_epoch",
                                                                   config.steps_per_epoch))
        done = -(-steps_done // config.steps_per_epoch)
    if done and ckpt.exists():
        model = keras.saving.load_model(ckpt, custom_objects={
            f.__name__: f for f in LOSSES.values()})
        model.optimizer.learning_rate = _schedule(config)  # follows a changed --steps too
        log(f"resuming from {ckpt} after epoch {done}/{epochs}")
        return model, done
    keras.utils.set_random_seed(config.seed)
    model = _build(config)
    if config.init:
        copied, new = init_weights(model, keras.saving.load_model(config.init, compile=False))
        log(f"starting from the weights of {config.init}"
            + (f" ({copied} layers copied; new: {', '.join(new)})" if new else ""))
    optimizer = keras.optimizers.AdamW(_schedule(config), weight_decay=1e-4)
    model.compile(optimizer=optimizer, loss=LOSSES[config.kind])
    return model, 0


def _trained_spec(config, settings, tune):
    """The trained model's :class:`ModelSpec`: kind, working size, thresholds, training record."""
    semantic = config.kind == "semantic"
    diameter, span = config.object_diameter, ()
    if not diameter and config.kind == "instances":  # trained at the images' own scale
        diameter, span = _working_sizes(_samples(config, "train", None))
    return ModelSpec(
        name=config.name or ("nuclei-unet" if config.kind == "instances" and not config.images_dir
                             else f"{config.kind}-unet"),
        kind=config.kind, classes=SEMANTIC_CLASSES if semantic else (),
        object_class="interior" if semantic else "", divisor=2 ** len(config.filters),
        object_diameter=diameter, object_diameter_range=span, postprocess=settings, training={
            **config.model_dump(exclude={"data_dir", "images_dir", "labels_dir"}),
            "train_images": len(_samples(config.model_copy(update={"train_images": 0}), "train",
                                         log=None)),
            "tune_images": len(tune),
            **(tuning_record() if config.kind == "instances" and tune else {}),
        })


def init_weights(model, source):
    """Copy ``source``'s weights into ``model``, layer by layer where name and shapes match.

    The same architecture copies whole; a deeper or wider one keeps what it shares with the
    source (e.g. the outer levels of a U-Net given one more level) and starts the rest from
    its random initialisation.

    Parameters
    ----------
    model, source : keras.Model

    Returns
    -------
    copied : int
        Layers copied (layers without weights are not counted).
    new : list of str
        Names of the layers with weights that were not copied.

    Raises
    ------
    ValueError
        No layer matches: the source is not a relative of ``model``.
    """
    theirs = {layer.name: layer for layer in source.layers}
    copied, new = 0, []
    for layer in model.layers:
        if not layer.weights:
            continue
        other = theirs.get(layer.name)
        mine = [tuple(w.shape) for w in layer.weights]
        if other is None or [tuple(w.shape) for w in other.weights] != mine:
            new.append(layer.name)
            continue
        layer.set_weights(other.get_weights())
        copied += 1
    if not copied:
        raise ValueError(f"init={source.name!r} shares no layer (by name and shape) with the "
                         f"model being trained: pass a model of the same family or none")
    return copied, new


def _schedule(config):
    """Linear warm-up, then cosine decay to 2% over the remaining steps."""
    import keras

    warmup = min(config.warmup_steps, config.steps // 4)
    return keras.optimizers.schedules.CosineDecay(
        0.0, max(1, config.steps - warmup), alpha=0.02,
        warmup_target=config.learning_rate, warmup_steps=warmup,
    )


def _epoch_steps(config, epoch):
    """Steps of epoch ``epoch`` (0-based): ``steps_per_epoch``, the last one what remains."""
    return min(config.steps_per_epoch, config.steps - epoch * config.steps_per_epoch)


def _fit(model, sampler, config, done, epochs, ckpt, state_file, log):
    """Train epochs ``done`` to ``epochs``: exactly ``config.steps`` steps in all, a line each."""
    import keras

    class Batches(keras.utils.PyDataset):
        def __init__(self):
            super().__init__(workers=2, use_multiprocessing=False, max_queue_size=8)

        def __len__(self):
            return _epoch_steps(config, self.epoch)

        def __getitem__(self, idx):
            return sampler.batch(np.random.default_rng([config.seed, self.epoch, idx]))

        def on_epoch_begin(self):
            pass

    data = Batches()
    data.epoch = done
    start, first_step = time.time(), min(config.steps, done * config.steps_per_epoch)
    log(f"training steps {first_step + 1}-{config.steps} in epochs "
        f"{done + 1}-{epochs} of up to {config.steps_per_epoch} steps; a line per epoch")

    class Checkpoint(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            data.epoch = epoch
            self.t0 = time.time()

        def on_epoch_end(self, epoch, logs=None):
            tmp = ckpt.with_name(".checkpoint.tmp.keras")
            self.model.save(tmp)
            tmp.replace(ckpt)
            steps = min(config.steps, (epoch + 1) * config.steps_per_epoch)
            state_file.write_text(json.dumps({"epoch": epoch + 1, "steps": steps,
                                              "loss": logs.get("loss"),
                                              "steps_per_epoch": config.steps_per_epoch}))
            eta = (time.time() - start) / (steps - first_step) * (config.steps - steps)
            log(f"epoch {epoch + 1}/{epochs} step {steps}/{config.steps} loss "
                f"{logs.get('loss'):.4f} ({time.time() - self.t0:.0f}s, about {eta:.0f}s left)")

    # no shuffling by Keras: its order comes from Python's global random state, which a resumed
    # run does not restore; each batch's content is drawn from (seed, epoch, index) anyway. The
    # last epoch may be shorter: Keras reads the data's length once per fit, so it has its own.
    full = min(epochs, config.steps // config.steps_per_epoch)
    for first, last in ((done, full), (max(done, full), epochs)):
        if first < last:
            data.epoch = first
            model.fit(data, epochs=last, initial_epoch=first, callbacks=[Checkpoint()],
                      verbose=0, shuffle=False)


#: Thresholds searched by :func:`tune_thresholds`: foreground, marker, outline weight.
TUNING_GRID = ((0.5, 0.6, 0.7, 0.8), (0.1, 0.2, 0.3, 0.4, 0.5), (0.5, 1.0, 1.5, 2.0))
#: Smallest object areas (pixels) tried at the best thresholds.
TUNING_MIN_AREAS = (4, 8, 16, 24, 32, 48)
#: Then, together: the smallest marker (pixels) and the lowest mean foreground probability of
#: an object kept (0: no such filter).
TUNING_OBJECT_FILTERS = ((0, 4, 8, 12, 16, 24), (0.0, 0.9, 0.93, 0.95, 0.97))
#: Then, together: the step of the levels at which markers are split, and the smallest part
#: (a fraction of its marker) that counts (splitting off: the best so far is kept when no
#: pair beats it).
TUNING_SPLITS = ((0.1, 0.15, 0.2), (0.1, 0.15, 0.2))
#: Settings whose mean AP is within this of the best are ties (about the noise of a mean over
#: the 58 tune images); among them the one with the lowest relative count error is chosen.
TUNING_AP_TOLERANCE = 0.003


def tuning_record():
    """The search space of :func:`tune_thresholds`, as recorded in a tuned model's sidecar."""
    return {"tuning_grid": [list(v) for v in TUNING_GRID],
            "tuning_min_areas": list(TUNING_MIN_AREAS),
            "tuning_object_filters": [list(v) for v in TUNING_OBJECT_FILTERS],
            "tuning_splits": [list(v) for v in TUNING_SPLITS],
            "tuning_ap_tolerance": TUNING_AP_TOLERANCE}


def tune_thresholds(model, samples, *, object_diameter=0.0, log=print):
    """Grid-search :class:`PostprocessSettings` for mean AP on ``samples`` (never the val split).

    Mean AP decides; settings within :data:`TUNING_AP_TOLERANCE` of the best are ties, settled
    by the lowest mean relative count error (after a last pass over the two settings that trade
    one for the other most: the smallest object area and the lowest mean foreground
    probability). The order of the search is :data:`TUNING_GRID`, then
    :data:`TUNING_MIN_AREAS`, :data:`TUNING_OBJECT_FILTERS`, :data:`TUNING_SPLITS` and the
    smallest area again.

    Parameters
    ----------
    model : keras.Model or LoadedModel
        An instance model (three output maps). A :class:`LoadedModel` is prepared and tiled as
        its own spec says; a bare Keras model with the default :class:`ModelSpec`.
    samples : list of Sample
        Images with their instance labels (:mod:`segmodel.training.datasets`).
    object_diameter : float, optional
        With a value above 0, each image is first brought to its automatic scale for nuclei of
        this many pixels (as ``--scale auto`` does), so the thresholds are tuned for the way the
        model is used. Default 0.0: every image at its own resolution.
    log : callable, optional
        Receives the summary line (default :func:`print`).

    Returns
    -------
    PostprocessSettings
        The chosen settings.
    """
    spec, truths, cases = _tuning_cases(model, samples, object_diameter)
    scored = {}  # settings -> (mean AP, mean relative count error)

    def score(settings):
        if settings not in scored:
            trial = replace(spec, postprocess=settings)
            rows = [score_image(t, finish(m, p, trial)) for t, (m, p) in zip(truths, cases)]
            scored[settings] = (float(np.mean([r["ap"] for r in rows])),
                                float(np.mean([r["count_error"] for r in rows])))
        return scored[settings][0]

    best, best_score = _search_settings(score)
    ties = [s for s, (ap, _) in scored.items() if ap >= best_score - TUNING_AP_TOLERANCE]
    chosen = min(ties, key=lambda s: (scored[s][1], -scored[s][0]))
    ap, count_error = scored[chosen]
    log(f"tuned thresholds on {len(samples)} images: {chosen} (mean AP {ap:.3f}, relative "
        f"count error {count_error:.3f}; best mean AP {best_score:.3f}, with count error "
        f"{scored[best][1]:.3f})")
    return chosen


def _tuning_cases(model, samples, object_diameter):
    """``(spec, truths, cases)``: each sample's truth, and its maps with the prepared image.

    Downscaled maps are brought to the image's resolution once, as :func:`finish` would for
    every setting.
    """
    from segmodel.model.loading import LoadedModel

    if isinstance(model, LoadedModel):  # prepared and tiled as its own spec says, as in use
        spec = replace(model.spec, object_diameter=object_diameter)
        lm = replace(model, spec=spec)
    else:
        spec = ModelSpec(object_diameter=object_diameter)
        lm = LoadedModel(model, spec, "", "")
    tiling = default_tiling(spec)
    loaded = [s.load() for s in samples]
    truths = [labels for _, labels in loaded]
    prepared = [prepare(im, spec) for im, _ in loaded]
    if object_diameter:
        _, prepared = predict_labels(lm, prepared, tiling, auto=True)
    maps = predict_maps(lm.predict_batch, [p.x for p in prepared], tiling=tiling)
    cases = []
    for m, p in zip(maps, prepared):
        if p.scale < 1.0:
            m, p = resize(m, p.image.shape[:2], order=1), Prepared(p.image, None, 1.0)
        cases.append((m, p))
    return spec, truths, cases


def _search_settings(score):
    """``(best settings, best mean AP)`` of the search; ``score(settings)`` is the mean AP."""
    best, best_score = PostprocessSettings(), -1.0
    for fg, marker, bw in itertools.product(*TUNING_GRID):
        settings = replace(PostprocessSettings(), foreground=fg, marker=marker, boundary_weight=bw)
        if (trial_score := score(settings)) > best_score:
            best, best_score = settings, trial_score

    def search(candidates):
        nonlocal best, best_score
        for settings in candidates:
            if settings != best and (trial_score := score(settings)) > best_score:
                best, best_score = settings, trial_score

    # then the smallest object kept, at the best thresholds; the object filters; the splitting
    # of markers; and the smallest object again, as the filters and splits may have moved it
    search([replace(best, min_area=a) for a in TUNING_MIN_AREAS])
    search([replace(best, min_marker_area=m, min_mean_foreground=f)
            for m, f in itertools.product(*TUNING_OBJECT_FILTERS)])
    search([replace(best, split_step=st, split_fraction=fr)
            for st, fr in itertools.product(*TUNING_SPLITS)])
    search([replace(best, min_area=a) for a in TUNING_MIN_AREAS])
    # near-ties: the smallest area and mean foreground probability together, for the count
    for a, f in itertools.product(TUNING_MIN_AREAS, TUNING_OBJECT_FILTERS[1]):
        score(replace(best, min_area=a, min_mean_foreground=f))
    return best, best_score


def parse_filters(text):
    """The U-Net's filters per level from a comma-separated option value.

    Parameters
    ----------
    text : str
        E.g. "16,32,64,128".

    Returns
    -------
    tuple of int

    Raises
    ------
    ValueError
        Naming the option and the value received when an entry is not a positive integer (the
        message ``segflow train --filters`` shows).
    """
    try:
        filters = tuple(int(f) for f in str(text).split(","))
    except ValueError:
        filters = ()
    if not filters or min(filters) < 1:
        raise ValueError(f"--filters must be positive integers separated by commas, e.g. "
                         f"16,32,64,128. Received: --filters {text!r}")
    return filters
