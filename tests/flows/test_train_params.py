"""The ``train-model`` flow's parameters are the engine's training settings, declared once."""

import inspect
import logging

from flows import train as train_flow
from flows.params import TrainParams
from segmodel.training.train import TrainConfig


def test_the_flow_parameters_add_only_out_dir_to_the_training_settings():
    assert inspect.get_annotations(TrainParams) == {"out_dir": str}
    assert TrainParams.model_fields.keys() - TrainConfig.model_fields.keys() == {"out_dir"}
    for field, info in TrainConfig.model_fields.items():
        mine = TrainParams.model_fields[field]
        assert (mine.annotation, mine.default, mine.default_factory, mine.description,
                mine.metadata, mine.json_schema_extra) == \
            (info.annotation, info.default, info.default_factory, info.description,
             info.metadata, info.json_schema_extra), field
    ours, theirs = TrainParams.__pydantic_decorators__, TrainConfig.__pydantic_decorators__
    assert ours.field_validators.keys() == theirs.field_validators.keys()
    assert ours.model_validators.keys() == theirs.model_validators.keys()
    assert TrainParams.model_config == TrainConfig.model_config


def test_the_flow_hands_every_setting_to_the_engine(monkeypatch):
    seen = {}

    def fake_train(out_dir, config, log):
        seen.update(out_dir=out_dir, config=config)
        return f"{out_dir}/model.keras"

    monkeypatch.setattr(train_flow, "get_run_logger", lambda: logging.getLogger("test"))
    monkeypatch.setattr(train_flow, "train", fake_train)
    params = TrainParams(out_dir="runs/x", data_dir="data", steps=7, steps_per_epoch=7,
                         filters=(8, 16), bottleneck=16, patch=32, images_dir="im",
                         labels_dir="lab", kind="semantic", name="mine", init="a.keras",
                         contact_weight=5, seed=3, warmup_steps=3,
                         modality_weights={"histology": 1.0})
    assert train_flow._train.fn(params) == "runs/x/model.keras"
    assert seen["out_dir"] == "runs/x" and type(seen["config"]) is TrainConfig
    assert seen["config"].model_dump() == params.model_dump(exclude={"out_dir"})
