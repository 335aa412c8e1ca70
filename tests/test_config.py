"""Config: Dassl 0.6.3 defaults, the shipped CoOp/CoCoOp yamls, the extension hook, errors and hashing."""

from __future__ import annotations

from pathlib import Path

import pytest

import vlprompt  # noqa: F401 - must precede any torchvision/clip import (installs the shim)
from vlprompt.engine import config as config_module
from vlprompt.engine.config import (
    CN,
    ConfigError,
    config_hash,
    extend_cfg,
    get_cfg_default,
    merge_from_file,
    merge_from_list,
    register_cfg_extension,
)

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "configs"

# The trainer modules declare these keys; CoOp's extend_cfg has exactly these defaults.
COOP_KEYS = {"N_CTX": 16, "CSC": False, "CTX_INIT": "", "PREC": "fp16", "CLASS_TOKEN_POSITION": "end"}
COCOOP_KEYS = {"N_CTX": 16, "CTX_INIT": "", "PREC": "fp16"}


def _declare_plugin_keys_for_tests(cfg: CN) -> None:
    """Stand-in for the trainer modules' extensions; only fills what they have not declared."""
    for node_name, keys in (("COOP", COOP_KEYS), ("COCOOP", COCOOP_KEYS)):
        if node_name not in cfg.TRAINER:
            cfg.TRAINER[node_name] = CN()
        for key, value in keys.items():
            if key not in cfg.TRAINER[node_name]:
                cfg.TRAINER[node_name][key] = value


def _ensure_plugin_keys() -> str:
    """Use the real trainer modules when they import; otherwise register the test-local stand-in.

    Returns which source declared the keys (shown in the inventory test's output on failure).
    """
    try:
        import vlprompt.trainers  # noqa: F401
    except Exception as error:  # noqa: BLE001 - any failure there must not hide the config tests
        import_problem = f"vlprompt.trainers failed to import: {error!r}"
    else:
        import_problem = ""
    probe = extend_cfg(get_cfg_default())
    declared = all(
        node in probe.TRAINER and all(key in probe.TRAINER[node] for key in keys)
        for node, keys in (("COOP", COOP_KEYS), ("COCOOP", COCOOP_KEYS))
    )
    if declared:
        return "trainer modules"
    register_cfg_extension(_declare_plugin_keys_for_tests)
    return f"test-local stand-in ({import_problem or 'trainer modules do not declare the keys yet'})"


PLUGIN_KEYS_SOURCE = _ensure_plugin_keys()


@pytest.fixture
def cfg() -> CN:
    return extend_cfg(get_cfg_default())


@pytest.fixture
def isolated_extensions(monkeypatch: pytest.MonkeyPatch) -> None:
    """Registrations made inside a test do not leak into the global registry."""
    monkeypatch.setattr(config_module, "_EXTENSIONS", dict(config_module._EXTENSIONS))


# --------------------------------------------------------------------------------------------- defaults


def _leaf_count(node: CN) -> int:
    return sum(_leaf_count(v) if isinstance(v, CN) else 1 for v in node.values())


def test_dassl_defaults_selection() -> None:
    cfg = get_cfg_default()
    expected = {
        "VERSION": 1,
        "OUTPUT_DIR": "./output",
        "RESUME": "",
        "SEED": -1,
        "USE_CUDA": True,
        "VERBOSE": True,
        "INPUT.SIZE": (224, 224),
        "INPUT.INTERPOLATION": "bilinear",
        "INPUT.TRANSFORMS": (),
        "INPUT.PIXEL_MEAN": [0.485, 0.456, 0.406],
        "INPUT.PIXEL_STD": [0.229, 0.224, 0.225],
        "INPUT.RRCROP_SCALE": (0.08, 1.0),
        "INPUT.CROP_PADDING": 4,
        "INPUT.GB_K": 21,
        "INPUT.COLORJITTER_H": 0.1,
        "INPUT.RGS_P": 0.2,
        "DATASET.ROOT": "",
        "DATASET.NUM_SHOTS": -1,
        "DATASET.VAL_PERCENT": 0.1,
        "DATASET.SUBSAMPLE_CLASSES": "all",
        "DATALOADER.NUM_WORKERS": 4,
        "DATALOADER.SKIP_CORRUPT_IMAGES": False,
        "DATALOADER.TRAIN_X.SAMPLER": "RandomSampler",
        "DATALOADER.TRAIN_X.BATCH_SIZE": 32,
        "DATALOADER.TRAIN_U.SAME_AS_X": True,
        "DATALOADER.TEST.SAMPLER": "SequentialSampler",
        "DATALOADER.TEST.BATCH_SIZE": 32,
        "MODEL.INIT_WEIGHTS": "",
        "MODEL.BACKBONE.PRETRAINED": True,
        "MODEL.HEAD.ACTIVATION": "relu",
        "OPTIM.NAME": "adam",
        "OPTIM.LR": 3e-4,
        "OPTIM.WEIGHT_DECAY": 5e-4,
        "OPTIM.MOMENTUM": 0.9,
        "OPTIM.SGD_DAMPNING": 0,
        "OPTIM.LR_SCHEDULER": "single_step",
        "OPTIM.STEPSIZE": (-1,),
        "OPTIM.MAX_EPOCH": 10,
        "OPTIM.WARMUP_EPOCH": -1,
        "OPTIM.WARMUP_TYPE": "linear",
        "OPTIM.WARMUP_CONS_LR": 1e-5,
        "OPTIM.WARMUP_MIN_LR": 1e-5,
        "OPTIM.WARMUP_RECOUNT": True,
        "TRAIN.CHECKPOINT_FREQ": 0,
        "TRAIN.PRINT_FREQ": 10,
        "TRAIN.COUNT_ITER": "train_x",
        "TEST.EVALUATOR": "Classification",
        "TEST.PER_CLASS_RESULT": False,
        "TEST.SPLIT": "test",
        "TEST.FINAL_MODEL": "last_step",
        "TRAINER.NAME": "",
        "TRAINER.MCD.N_STEP_F": 4,
        "TRAINER.DOMAINMIX.TYPE": "crossdomain",
        "TRAINER.MIXMATCH.RAMPUP": 20000,
        "TRAINER.FIXMATCH.CONF_THRE": 0.95,
    }
    for dotted, value in expected.items():
        node = cfg
        for part in dotted.split("."):
            node = node[part]
        assert node == value and type(node) is type(value), dotted
    # Dassl 0.6.3 has 135 leaves; SUBSAMPLE_CLASSES and SKIP_CORRUPT_IMAGES are the two additions.
    assert _leaf_count(cfg) == 137
    assert sorted(cfg.TRAINER.keys()) == sorted(
        ["NAME", "MCD", "MME", "CDAC", "SE", "M3SDA", "DAEL", "CROSSGRAD", "DDAIG", "DAELDG", "DOMAINMIX",
         "ENTMIN", "MEANTEACHER", "MIXMATCH", "FIXMATCH"]
    )


def test_defaults_are_fresh_copies() -> None:
    first = get_cfg_default()
    first.INPUT.PIXEL_MEAN.append(1.0)
    first.OPTIM.LR = 1.0
    second = get_cfg_default()
    assert second.INPUT.PIXEL_MEAN == [0.485, 0.456, 0.406]
    assert second.OPTIM.LR == 3e-4


# ------------------------------------------------------------------------------------------ shipped yamls

DATASET_NAMES = {
    "caltech101": "Caltech101",
    "dtd": "DescribableTextures",
    "eurosat": "EuroSAT",
    "fgvc_aircraft": "FGVCAircraft",
    "food101": "Food101",
    "imagenet": "ImageNet",
    "imagenet_a": "ImageNetA",
    "imagenet_r": "ImageNetR",
    "imagenet_sketch": "ImageNetSketch",
    "imagenetv2": "ImageNetV2",
    "oxford_flowers": "OxfordFlowers",
    "oxford_pets": "OxfordPets",
    "stanford_cars": "StanfordCars",
    "sun397": "SUN397",
    "ucf101": "UCF101",
}

# name -> (backbone, MAX_EPOCH, TRAIN_X batch, TEST batch, PRINT_FREQ, method keys); None = Dassl default.
TRAINER_YAMLS = {
    "CoOp/rn50": ("RN50", 200, 32, 100, 5, {}),
    "CoOp/rn101": ("RN101", 200, 32, 100, 5, {}),
    "CoOp/vit_b16": ("ViT-B/16", 200, 32, 100, 5, {}),
    "CoOp/vit_b32": ("ViT-B/32", 200, 32, 100, 5, {}),
    "CoOp/rn50_ep50": ("RN50", 50, 32, 100, 5, {}),
    "CoOp/rn101_ep50": ("RN101", 50, 32, 100, 5, {}),
    "CoOp/vit_b16_ep50": ("ViT-B/16", 50, 32, 100, 5, {}),
    "CoOp/vit_b32_ep50": ("ViT-B/32", 50, 32, 100, 5, {}),
    "CoOp/rn50_ep100": ("RN50", 100, 32, 100, 5, {}),
    "CoOp/vit_b16_ep100": ("ViT-B/16", 100, 32, 100, 5, {}),
    "CoOp/rn50_ctxv1": ("RN50", 200, 32, 100, 5, {"COOP.CTX_INIT": "a photo of a"}),
    "CoOp/vit_b16_ctxv1": ("ViT-B/16", 200, 32, 100, 5, {"COOP.CTX_INIT": "a photo of a"}),
    "CoOp/rn50_ep50_ctxv1": ("RN50", 50, 32, 100, 5, {"COOP.CTX_INIT": "a photo of a"}),
    "CoOp/vit_b16_ep50_ctxv1": ("ViT-B/16", 50, 32, 100, 5, {"COOP.CTX_INIT": "a photo of a"}),
    "CoOp/vit_b16_ep100_ctxv1": ("ViT-B/16", 100, 32, 100, 5, {"COOP.CTX_INIT": "a photo of a"}),
    "CoOp/rn50_val": ("RN50", None, 200, 200, None, {}),
    "CoCoOp/vit_b16_c4_ep10_batch1": ("ViT-B/16", 10, 1, 100, 20, {"COCOOP.N_CTX": 4, "COCOOP.CTX_INIT": ""}),
    "CoCoOp/vit_b16_c8_ep10_batch1": ("ViT-B/16", 10, 1, 100, 20, {"COCOOP.N_CTX": 8, "COCOOP.CTX_INIT": ""}),
    "CoCoOp/vit_b16_c16_ep10_batch1": (
        "ViT-B/16", 10, 1, 100, 20, {"COCOOP.N_CTX": 16, "COCOOP.CTX_INIT": ""}
    ),
    "CoCoOp/vit_b16_c4_ep10_batch1_ctxv1": (
        "ViT-B/16", 10, 1, 100, 20, {"COCOOP.N_CTX": 4, "COCOOP.CTX_INIT": "a photo of a"}
    ),
}


def test_shipped_config_inventory() -> None:
    """Every reference yaml is shipped under its reference name; the CoOp/CoCoOp folders hold only those
    (other folders and the toy-world datasets are ours)."""
    print(f"TRAINER.COOP/COCOOP keys declared by: {PLUGIN_KEYS_SOURCE}")
    dataset_stems = {p.stem for p in (CONFIGS / "datasets").glob("*.yaml")}
    assert set(DATASET_NAMES) <= dataset_stems
    assert all(stem.startswith("toyworld") for stem in dataset_stems - set(DATASET_NAMES))
    shipped = sorted(str(p.relative_to(CONFIGS / "trainers").with_suffix("")) for p in
                     (CONFIGS / "trainers").glob("Co*Op/*.yaml"))
    assert shipped == sorted(TRAINER_YAMLS)


@pytest.mark.parametrize("path", sorted(CONFIGS.rglob("*.yaml")), ids=lambda p: str(p.relative_to(CONFIGS)))
def test_every_yaml_merges_onto_defaults(cfg: CN, path: Path) -> None:
    merge_from_file(cfg, path)


@pytest.mark.parametrize("stem", sorted(DATASET_NAMES))
def test_dataset_yaml_sets_only_the_name(cfg: CN, stem: str) -> None:
    before = config_hash(cfg)
    merge_from_file(cfg, CONFIGS / "datasets" / f"{stem}.yaml")
    assert cfg.DATASET.NAME == DATASET_NAMES[stem]
    cfg.DATASET.NAME = ""
    assert config_hash(cfg) == before  # nothing else changed


@pytest.mark.parametrize("name", sorted(TRAINER_YAMLS))
def test_trainer_yaml_values(cfg: CN, name: str) -> None:
    backbone, epochs, batch, test_batch, print_freq, method_keys = TRAINER_YAMLS[name]
    defaults = extend_cfg(get_cfg_default())
    merge_from_file(cfg, CONFIGS / "trainers" / f"{name}.yaml")
    assert cfg.MODEL.BACKBONE.NAME == backbone
    assert cfg.OPTIM.MAX_EPOCH == (defaults.OPTIM.MAX_EPOCH if epochs is None else epochs)
    assert cfg.DATALOADER.TRAIN_X.BATCH_SIZE == batch
    assert cfg.DATALOADER.TEST.BATCH_SIZE == test_batch
    assert cfg.DATALOADER.NUM_WORKERS == 8
    assert cfg.TRAIN.PRINT_FREQ == (defaults.TRAIN.PRINT_FREQ if print_freq is None else print_freq)
    # The INPUT block is shared by all 20 files: CLIP's statistics and bicubic resizing.
    assert cfg.INPUT.SIZE == (224, 224)
    assert cfg.INPUT.INTERPOLATION == "bicubic"
    assert cfg.INPUT.PIXEL_MEAN == [0.48145466, 0.4578275, 0.40821073]
    assert cfg.INPUT.PIXEL_STD == [0.26862954, 0.26130258, 0.27577711]
    # The yaml list takes the default's tuple type, as in Dassl.
    assert cfg.INPUT.TRANSFORMS == ("random_resized_crop", "random_flip", "normalize")
    if epochs is None:  # rn50_val has no OPTIM block
        assert cfg.OPTIM == defaults.OPTIM
    else:
        assert (cfg.OPTIM.NAME, cfg.OPTIM.LR, cfg.OPTIM.LR_SCHEDULER) == ("sgd", 0.002, "cosine")
        assert (cfg.OPTIM.WARMUP_EPOCH, cfg.OPTIM.WARMUP_TYPE) == (1, "constant")
        assert cfg.OPTIM.WARMUP_CONS_LR == 1e-5 and isinstance(cfg.OPTIM.WARMUP_CONS_LR, float)
    expected_trainer = defaults.TRAINER.clone()
    for dotted, value in method_keys.items():
        node, key = dotted.split(".")
        expected_trainer[node][key] = value
    assert cfg.TRAINER == expected_trainer


def test_dataset_then_method_yaml_then_opts(cfg: CN) -> None:
    merge_from_file(cfg, CONFIGS / "datasets" / "oxford_pets.yaml")
    merge_from_file(cfg, CONFIGS / "trainers" / "CoCoOp" / "vit_b16_c4_ep10_batch1_ctxv1.yaml")
    merge_from_list(cfg, ["DATASET.NUM_SHOTS", "16", "DATASET.SUBSAMPLE_CLASSES", "base",
                          "TRAINER.COCOOP.PREC", "fp32", "OPTIM.MAX_EPOCH", "2"])
    assert cfg.DATASET.NAME == "OxfordPets"
    assert cfg.DATASET.NUM_SHOTS == 16
    assert cfg.DATASET.SUBSAMPLE_CLASSES == "base"
    assert cfg.DATALOADER.TRAIN_X.BATCH_SIZE == 1
    assert cfg.TRAINER.COCOOP.N_CTX == 4
    assert cfg.TRAINER.COCOOP.CTX_INIT == "a photo of a"
    assert cfg.TRAINER.COCOOP.PREC == "fp32"
    assert cfg.TRAIN.PRINT_FREQ == 20
    assert cfg.OPTIM.MAX_EPOCH == 2


def test_opts_are_literal_evaluated(cfg: CN) -> None:
    merge_from_list(cfg, ["TRAINER.COOP.CSC", "True", "TRAINER.COOP.N_CTX", "4",
                          "TRAINER.COOP.CTX_INIT", "a_photo_of_a", "OPTIM.LR", "0.01",
                          "INPUT.SIZE", "(32, 32)", "DATASET.SOURCE_DOMAINS", "['a', 'b']"])
    assert cfg.TRAINER.COOP.CSC is True
    assert cfg.TRAINER.COOP.N_CTX == 4 and type(cfg.TRAINER.COOP.N_CTX) is int
    assert cfg.TRAINER.COOP.CTX_INIT == "a_photo_of_a"
    assert cfg.OPTIM.LR == 0.01
    assert cfg.INPUT.SIZE == (32, 32)
    assert cfg.DATASET.SOURCE_DOMAINS == ("a", "b")  # list coerced to the default's tuple, as yacs does


# --------------------------------------------------------------------------------------------- errors


def test_unknown_key_in_opts_suggests_closest(cfg: CN) -> None:
    with pytest.raises(ConfigError) as info:
        merge_from_list(cfg, ["OPTIM.MAX_EPOCHS", "5"])
    message = str(info.value)
    assert "OPTIM.MAX_EPOCHS" in message
    assert "command-line opts" in message
    assert "did you mean OPTIM.MAX_EPOCH" in message
    with pytest.raises(ConfigError, match=r"unknown config key optim\.lr .*no section optim.*did you mean OPTIM\.LR"):
        merge_from_list(cfg, ["optim.lr", "0.1"])
    with pytest.raises(ConfigError, match=r"TRAINER\.NEWMETHOD.*register_cfg_extension"):
        merge_from_list(cfg, ["TRAINER.NEWMETHOD.N_CTX", "4"])


def test_unknown_key_in_file_names_file_and_suggests(cfg: CN, tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("TRAIN:\n  MAX_EPOCH: 5\nDATALOADER:\n  TRAIN_X:\n    BATCH_SIZ: 4\n")
    before = cfg.clone()
    with pytest.raises(ConfigError) as info:
        merge_from_file(cfg, path)
    message = str(info.value)
    assert str(path) in message
    assert "TRAIN.MAX_EPOCH" in message and "OPTIM.MAX_EPOCH" in message  # right leaf, wrong section
    assert "DATALOADER.TRAIN_X.BATCH_SIZ" in message and "DATALOADER.TRAIN_X.BATCH_SIZE" in message
    assert cfg == before  # nothing was merged


def test_undeclared_method_section_explains_extension(tmp_path: Path) -> None:
    path = tmp_path / "method.yaml"
    path.write_text("TRAINER:\n  MYMETHOD:\n    N_CTX: 4\n")
    with pytest.raises(ConfigError, match=r"TRAINER\.MYMETHOD.*register_cfg_extension"):
        merge_from_file(get_cfg_default(), path)


def test_wrong_type_names_key_expected_and_given(cfg: CN, tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        merge_from_list(cfg, ["OPTIM.LR", "1"])
    message = str(info.value)
    assert "OPTIM.LR" in message and "expected float" in message and "got int 1" in message
    assert "1.0" in message  # the fix
    path = tmp_path / "typed.yaml"
    path.write_text("DATALOADER:\n  TRAIN_X:\n    BATCH_SIZE: 'big'\n")
    with pytest.raises(ConfigError, match=r"DATALOADER\.TRAIN_X\.BATCH_SIZE.*expected int.*got str 'big'") as info:
        merge_from_file(cfg, path)
    assert str(path) in str(info.value)
    with pytest.raises(ConfigError, match="is a section"):
        merge_from_list(cfg, ["OPTIM", "3"])
    assert cfg.OPTIM.LR == 3e-4 and cfg.DATALOADER.TRAIN_X.BATCH_SIZE == 32


def test_missing_file_names_path(cfg: CN, tmp_path: Path) -> None:
    missing = tmp_path / "nope" / "rn50.yaml"
    with pytest.raises(ConfigError, match="not found") as info:
        merge_from_file(cfg, missing)
    assert str(missing) in str(info.value)
    assert isinstance(info.value, FileNotFoundError)


def test_odd_opts_and_frozen_cfg(cfg: CN) -> None:
    with pytest.raises(ConfigError, match="'OPTIM.LR' has no value"):
        merge_from_list(cfg, ["OPTIM.MAX_EPOCH", "5", "OPTIM.LR"])
    cfg.freeze()
    with pytest.raises(ConfigError, match="frozen"):
        merge_from_list(cfg, ["OPTIM.MAX_EPOCH", "5"])


def test_base_key_is_resolved_relative_to_the_file(cfg: CN, tmp_path: Path) -> None:
    (tmp_path / "sub").mkdir()
    (tmp_path / "base.yaml").write_text("OPTIM:\n  MAX_EPOCH: 7\n  LR: 0.5\n")
    child = tmp_path / "sub" / "child.yaml"
    child.write_text("_BASE_: ../base.yaml\nOPTIM:\n  LR: 0.25\n")
    merge_from_file(cfg, child)
    assert (cfg.OPTIM.MAX_EPOCH, cfg.OPTIM.LR) == (7, 0.25)
    loop = tmp_path / "loop.yaml"
    loop.write_text("_BASE_: loop.yaml\n")
    with pytest.raises(ConfigError, match="cycle"):
        merge_from_file(cfg, loop)


# ----------------------------------------------------------------------------------------- extensions


@pytest.mark.usefixtures("isolated_extensions")
def test_extension_registered_twice_is_applied_once() -> None:
    calls = []

    def add_keys(cfg: CN) -> None:
        calls.append(1)
        cfg.TRAINER.DEMO_METHOD = CN()
        cfg.TRAINER.DEMO_METHOD.WIDTH = 3

    assert register_cfg_extension(add_keys) is add_keys  # usable as a decorator
    register_cfg_extension(add_keys)
    assert config_module.registered_cfg_extensions().count(add_keys) == 1
    cfg = extend_cfg(get_cfg_default())
    assert len(calls) == 1
    assert cfg.TRAINER.DEMO_METHOD.WIDTH == 3
    # A second extend_cfg on the same config must not reset values merged in between.
    merge_from_list(cfg, ["TRAINER.DEMO_METHOD.WIDTH", "5"])
    extend_cfg(cfg)
    assert len(calls) == 1 and cfg.TRAINER.DEMO_METHOD.WIDTH == 5
    # A fresh config gets it again.
    assert extend_cfg(get_cfg_default()).TRAINER.DEMO_METHOD.WIDTH == 3 and len(calls) == 2


@pytest.mark.usefixtures("isolated_extensions")
def test_extensions_apply_in_registration_order() -> None:
    order = []

    @register_cfg_extension
    def first(cfg: CN) -> None:
        order.append("first")
        cfg.TRAINER.ORDERED = CN()
        cfg.TRAINER.ORDERED.VALUE = 1

    @register_cfg_extension
    def second(cfg: CN) -> None:
        order.append("second")
        cfg.TRAINER.ORDERED.VALUE = 2  # relies on first having run

    cfg = extend_cfg(get_cfg_default())
    assert order == ["first", "second"] and cfg.TRAINER.ORDERED.VALUE == 2
    assert "ORDERED" not in get_cfg_default().TRAINER  # defaults stay method-free


# -------------------------------------------------------------------------------------------- hashing


def test_config_hash_is_stable_and_ignores_volatile_keys(cfg: CN) -> None:
    merge_from_file(cfg, CONFIGS / "trainers" / "CoOp" / "rn50.yaml")
    digest = config_hash(cfg)
    assert len(digest) == 12 and int(digest, 16) >= 0
    assert config_hash(cfg.clone()) == digest
    other = extend_cfg(get_cfg_default())
    merge_from_file(other, CONFIGS / "trainers" / "CoOp" / "rn50.yaml")
    assert config_hash(other) == digest
    merge_from_list(other, ["OUTPUT_DIR", "/tmp/elsewhere", "RESUME", "/tmp/old", "DATASET.ROOT", "/data",
                            "DATALOADER.NUM_WORKERS", "0"])
    assert config_hash(other) == digest
    merge_from_list(other, ["OPTIM.LR", "0.004"])
    assert config_hash(other) != digest
    changed = cfg.clone()
    changed.TRAINER.COOP.N_CTX = 8
    assert config_hash(changed) != digest
    cfg.freeze()
    assert config_hash(cfg) == digest  # frozen or not
