"""The ``train-model`` flow: a thin wrapper running :func:`segmodel.training.train.train`."""

from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE

from flows.params import TrainParams
from segmodel.training.train import TrainConfig, train


@task(name="train", cache_policy=NO_CACHE)
def _train(params: TrainParams) -> str:
    """Train or resume into ``params.out_dir``; return the final model's path."""
    logger = get_run_logger()
    config = TrainConfig(steps=params.steps, steps_per_epoch=params.steps_per_epoch,
                         learning_rate=params.learning_rate,
                         object_diameter=params.object_diameter, init=params.init,
                         seed=params.seed, images_dir=params.images_dir or "",
                         labels_dir=params.labels_dir or "", kind=params.kind, name=params.name,
                         filters=tuple(params.filters), bottleneck=params.bottleneck,
                         patch=params.patch, batch_size=params.batch_size,
                         contact_weight=params.contact_weight,
                         **({"data_dir": params.data_dir} if params.data_dir else {}))
    return str(train(params.out_dir, config, log=logger.info))


@flow(name="train-model")
def train_model(params: TrainParams) -> str:
    """Train the nuclei model, or a bundle on your own images (``images_dir``/``labels_dir``);
    rerun with the same out_dir to resume after an interruption."""
    return _train(params)
