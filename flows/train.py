"""The ``train-model`` flow: a thin wrapper running :func:`segmodel.training.train.train`."""

from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE

from flows.params import TrainParams
from segmodel.training.train import TrainConfig, train


@task(name="train", cache_policy=NO_CACHE)
def _train(params: TrainParams) -> str:
    """Train or resume into ``params.out_dir``; return the final model's path."""
    logger = get_run_logger()
    config = TrainConfig(**params.model_dump(exclude={"out_dir"}))
    return str(train(params.out_dir, config, log=logger.info))


@flow(name="train-model")
def train_model(params: TrainParams) -> str:
    """Train the nuclei model, or a bundle on your own images (``images_dir``/``labels_dir``);
    rerun with the same out_dir to resume after an interruption."""
    return _train(params)
