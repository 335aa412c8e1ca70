"""Dassl's trainer registry and TrainerX; the methods vlprompt must replace raise here."""

from vlprompt.engine.registry import Registry
from vlprompt.engine.trainer import TrainerX as _TrainerX

TRAINER_REGISTRY = Registry("TRAINER")
BUILT_WITH_STANDIN = []


def _must_be_replaced(name):
    def method(self, *args, **kwargs):
        raise AssertionError(f"stand-in Dassl's {name}() was called; vlprompt must use its own")

    return method


class TrainerX(_TrainerX):
    def build_data_loader(self):
        from dassl.data import DataManager

        dm = DataManager(self.cfg)
        self.train_loader_x, self.train_loader_u = dm.train_loader_x, dm.train_loader_u
        self.val_loader, self.test_loader = dm.val_loader, dm.test_loader
        self.num_classes, self.num_source_domains = dm.num_classes, dm.num_source_domains
        self.lab2cname, self.dm = dm.lab2cname, dm

    save_model = _must_be_replaced("save_model")
    load_model = _must_be_replaced("load_model")
    resume_model_if_exist = _must_be_replaced("resume_model_if_exist")
    test = _must_be_replaced("test")


def build_trainer(cfg):
    print(f"Loading trainer: {cfg.TRAINER.NAME}")
    trainer = TRAINER_REGISTRY.get(cfg.TRAINER.NAME)(cfg)
    BUILT_WITH_STANDIN.append(cfg.TRAINER.NAME)
    return trainer
