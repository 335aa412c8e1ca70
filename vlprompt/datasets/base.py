"""Shared base of the bundled datasets: where a dataset's files live (CoOp's layout, or TPT's with
``DATASET.LAYOUT tpt``), reading its split (the ``split_zhou_*.json`` or, without it, the split built
from the raw annotations), few-shot sampling and base/new subsampling. A dataset file declares its
folders and implements its raw reader; nothing else.

Two config keys are added here (``register_cfg_extension``):

* ``DATASET.LAYOUT``: ``"coop"`` (default) reads CoOp's folders (``oxford_pets/images``, ...);
  ``"tpt"`` reads TPT's (``OxfordPets``, ``Flower102/jpg``, ``ImageNet/val``, ``imagenet-a``, ...).
* ``DATASET.SPLIT_DIR``: a folder holding the ``split_zhou_*.json`` files (TPT keeps them in
  ``data/data_splits``); when set it is searched before the dataset folder (and, in TPT's layout,
  before ``DATASET.ROOT/data_splits``).
"""

from __future__ import annotations

import logging
import os
import os.path as osp
from collections.abc import Sequence

from vlprompt.compat import DatasetBase, Datum
from vlprompt.engine.config import register_cfg_extension
from vlprompt.engine.data import check_labels, fewshot_shortfall, load_or_create_fewshot, subsample_classes
from vlprompt.errors import UserError, UserValueError
from vlprompt.imagenet_classnames import IMAGENET_CLASSNAMES
from vlprompt.splits import dataset_root, fewshot_and_subsample, read_split, try_save_split

log = logging.getLogger(__name__)

LAYOUTS = ("coop", "tpt")
TPT_SPLIT_DIR = "data_splits"  # under DATASET.ROOT in TPT's layout (TPT's own code: ./data/data_splits)
DOCS = "DATASETS.md"


@register_cfg_extension
def add_dataset_layout_keys(cfg) -> None:
    """``DATASET.LAYOUT`` (coop | tpt) and ``DATASET.SPLIT_DIR`` (extra folder of split files)."""
    if "LAYOUT" not in cfg.DATASET:
        cfg.DATASET.LAYOUT = "coop"
    if "SPLIT_DIR" not in cfg.DATASET:
        cfg.DATASET.SPLIT_DIR = ""


def dataset_layout(cfg) -> str:
    """``DATASET.LAYOUT`` lower-cased (``coop`` when the key is absent); anything else is an error."""
    layout = str(getattr(cfg.DATASET, "LAYOUT", "coop") or "coop").strip().lower()
    if layout not in LAYOUTS:
        raise UserValueError(f'DATASET.LAYOUT is "{layout}"; use "coop" (CoOp\'s folders) or "tpt" (TPT\'s folders)')
    return layout


class DatasetLayoutError(UserError, FileNotFoundError):
    """A dataset file or folder is missing; the message names it, the expected layout and the docs."""


class EmptyClassFolderError(UserError, ValueError):
    """A class folder without images (it would leave a gap in the labels); the message names it and its label."""


def list_files(folder: str) -> list[str]:
    """Sorted names of the non-hidden files in ``folder`` (the reference's listing is unsorted, so its
    order depended on the file system)."""
    with os.scandir(folder) as entries:
        return sorted(e.name for e in entries if not e.name.startswith(".") and e.is_file())


def list_folders(folder: str) -> list[str]:
    """Sorted names of the non-hidden sub-folders of ``folder`` (stray files such as README.txt skipped)."""
    with os.scandir(folder) as entries:
        return sorted(e.name for e in entries if not e.name.startswith(".") and e.is_dir())


def read_classnames(filepath: str) -> dict[str, str]:
    """ImageNet's ``classnames.txt``: ``<folder> <class name with spaces>`` per line → {folder: name}, in
    file order (label order)."""
    classnames: dict[str, str] = {}
    with open(filepath) as handle:
        for line_number, line in enumerate(handle, start=1):
            line = line.strip()
            if not line:
                continue
            folder, _, name = line.partition(" ")
            if not name:
                raise UserValueError(f'{filepath}:{line_number}: expected "<wnid> <class name>", got "{line}"')
            classnames[folder] = name.strip()
    if not classnames:
        raise UserValueError(f'"{filepath}" lists no classes; it must hold "<wnid> <class name>" lines')
    return classnames


def folder_items(split_dir: str, folders: Sequence[str], classnames: Sequence[str]) -> list[Datum]:
    """Every file of ``split_dir/<folders[i]>/`` as a Datum of label ``i`` and class ``classnames[i]``.

    Files just listed exist, so the per-image existence check of ``Datum`` is skipped (ImageNet's
    1.28M images would cost as many ``stat`` calls). An empty class folder is refused: its label would
    have no image, and a classifier built from the labels present would shift every later class name.
    """
    items = []
    for label, (folder, classname) in enumerate(zip(folders, classnames)):
        class_dir = osp.join(split_dir, folder)
        if not osp.isdir(class_dir):
            raise DatasetLayoutError(f'Class folder not found: "{class_dir}"')
        names = list_files(class_dir)
        if not names:
            raise EmptyClassFolderError(
                f'Class folder "{class_dir}" (label {label}, "{classname}") has no images; labels are the sorted '
                "index of the class folders, so every later class would get the wrong name. Put the class's "
                "images in it, or remove the folder if the class is not part of this dataset"
            )
        items.extend(Datum._trusted(osp.join(class_dir, name), label, 0, classname) for name in names)
    return items


class LayoutDataset(DatasetBase):
    """Where a dataset's files are, in either layout, and errors that say what is missing and where to look.

    Subclasses set ``dataset_dir``/``image_subdir`` (CoOp's folder under ``DATASET.ROOT`` and the image
    folder inside it) and ``tpt_dir``/``tpt_image_subdir`` (TPT's), plus ``contents``: the expected
    files, relative to the dataset folder, shown in error messages and by the data checker.
    """

    dataset_dir = ""
    image_subdir = ""
    tpt_dir = ""
    tpt_image_subdir = ""
    contents: tuple[str, ...] = ()
    tpt_contents: tuple[str, ...] | None = None  # None: same as ``contents`` (with TPT's image folder)

    @classmethod
    def folders(cls, layout: str) -> tuple[str, str]:
        """(dataset folder under the root, image folder inside it) for ``layout``."""
        if layout == "tpt":
            return cls.tpt_dir or cls.dataset_dir, cls.tpt_image_subdir
        return cls.dataset_dir, cls.image_subdir

    def setup_paths(self, cfg) -> None:
        """Resolve ``self.root``, ``self.layout``, ``self.dataset_dir`` and ``self.image_dir``; the
        dataset folder must exist."""
        self.cfg_split_dir = str(getattr(cfg.DATASET, "SPLIT_DIR", "") or "")
        self.root = dataset_root(cfg)
        self.layout = dataset_layout(cfg)
        folder, image_subdir = self.folders(self.layout)
        self.dataset_dir = osp.join(self.root, folder)
        self.image_dir = osp.join(self.dataset_dir, image_subdir) if image_subdir else self.dataset_dir
        if not osp.isdir(self.dataset_dir):
            raise self.layout_error(f'dataset folder not found: "{self.dataset_dir}"')

    @classmethod
    def expected_layout(cls, layout: str = "coop") -> list[str]:
        """The expected files, as lines relative to ``DATASET.ROOT``."""
        folder, _ = cls.folders(layout)
        lines = cls.tpt_contents if layout == "tpt" and cls.tpt_contents is not None else cls.contents
        return [f"{folder}/{line}" if line else f"{folder}/" for line in lines]

    def layout_error(self, problem: str) -> DatasetLayoutError:
        """An error naming the problem, the expected layout, the docs and the checker command."""
        name = type(self).__name__
        expected = "\n".join(f"    DATASET.ROOT/{line}" for line in self.expected_layout(self.layout))
        layout_flag = " --layout tpt" if self.layout == "tpt" else ""
        message = (
            f"{name}: {problem}.\n  Expected ({self.layout} layout, DATASET.ROOT={self.root}):\n{expected}\n"
            f'  See {DOCS}, section "{name}"; check with: python -m vlprompt.check_data --root {self.root}'
            f"{layout_flag} --dataset {name}"
        )
        other = "tpt" if self.layout == "coop" else "coop"
        other_dir = osp.join(self.root, self.folders(other)[0])
        if other_dir != osp.join(self.root, self.folders(self.layout)[0]) and osp.isdir(other_dir):
            message += (f'\n  Found "{other_dir}" ({other.upper()}\'s layout): pass DATASET.LAYOUT {other} '
                        f"(the checker: --layout {other})")
        return DatasetLayoutError(message)

    def read_splits(self, save: bool = True) -> dict[str, list]:
        """The dataset's splits before few-shot sampling and subsampling (used by the data checker);
        ``save`` allows writing files such as a freshly built split JSON."""
        raise NotImplementedError


class SplitDataset(LayoutDataset):
    """The 10 datasets with a split JSON (``split_name``) and FGVCAircraft (none): read the split, else
    build it from the raw annotations (``read_raw_split``) and save it, then few-shot and subsample."""

    split_name = ""  # "OxfordPets" -> split_zhou_OxfordPets.json; "" = the dataset has no split JSON
    raw_files: tuple[str, ...] = ()  # what read_raw_split needs, relative to the dataset folder

    def __init__(self, cfg) -> None:
        self.setup_paths(cfg)
        built = bool(self.split_name) and not osp.isfile(self.split_path)
        splits = self.read_splits(save=False)
        train, val, test = fewshot_and_subsample(cfg, self.dataset_dir, splits["train"], splits["val"], splits["test"])
        if built:
            # A split built from the raw annotations is saved only now, after the few-shot cache: the first
            # run draws its subset from the random stream the build left (as CoOp's), and a rerun reads it
            # from the cache. Saved first, a kill in between would make the rerun read the JSON and draw
            # again from a fresh stream, another subset for the same seed.
            try_save_split(splits["train"], splits["val"], splits["test"], self.split_path, self.image_dir)
        self.shots_per_class = fewshot_shortfall(train, cfg.DATASET.NUM_SHOTS)
        DatasetBase.__init__(self, train_x=train, val=val, test=test)

    @property
    def split_file(self) -> str:
        return f"split_zhou_{self.split_name}.json" if self.split_name else ""

    def setup_paths(self, cfg) -> None:
        super().setup_paths(cfg)
        self.split_path = ""
        if self.split_name:
            candidates = [osp.join(self.dataset_dir, self.split_file)]
            if self.layout == "tpt":  # TPT keeps CoOp's split files in one folder beside the datasets
                candidates.insert(0, osp.join(self.root, TPT_SPLIT_DIR, self.split_file))
            if self.cfg_split_dir:
                candidates.insert(0, osp.join(osp.abspath(osp.expanduser(self.cfg_split_dir)), self.split_file))
            # The first that exists; else the dataset folder, where a built split is saved (as CoOp does).
            self.split_path = next((path for path in candidates if osp.isfile(path)), candidates[-1])

    def raw_paths(self) -> list[str]:
        """Absolute paths of the raw files the split is built from (the image folder when none)."""
        return [osp.join(self.dataset_dir, name) for name in self.raw_files] or [self.image_dir]

    def read_splits(self, save: bool = True) -> dict[str, list]:
        if self.split_path and osp.isfile(self.split_path):
            train, val, test = read_split(self.split_path, self.image_dir)
            return {"train": train, "val": val, "test": test}
        missing = [path for path in self.raw_paths() if not osp.exists(path)]
        if missing:
            if self.split_name:
                where = f'the split file "{self.split_path}"'
                if self.cfg_split_dir:
                    where += f' (nor in DATASET.SPLIT_DIR "{self.cfg_split_dir}")'
                raise self.layout_error(f'neither {where} nor "{missing[0]}" (to build the split from) exists')
            raise self.layout_error(f'"{missing[0]}" not found')
        train, val, test = self.read_raw_split()
        splits = {"train": train, "val": val, "test": test}
        check_labels(splits, f"{type(self).__name__} (split built from {', '.join(self.raw_paths())})")
        if save and self.split_name:
            try_save_split(train, val, test, self.split_path, self.image_dir)
        return splits

    def read_raw_split(self) -> tuple[list, list, list]:
        """(train, val, test) built from the raw annotations, consuming ``random`` as CoOp does."""
        raise NotImplementedError(f"{type(self).__name__} has no raw-annotation reader")

    def read_text_lines(self, relpath: str) -> list[str]:
        """Stripped non-empty lines of a text file in the dataset folder (CRLF-safe)."""
        with open(osp.join(self.dataset_dir, relpath)) as handle:
            return [line.strip() for line in handle if line.strip()]


# -------------------------------------------------------------------------------- ImageNet family


class ImageNetFamily(LayoutDataset):
    """Reads ImageNet's ``classnames.txt`` (label order, ``<wnid> <name>``) for ImageNet and its variants."""

    def classnames_candidates(self) -> list[str]:
        """Where ``classnames.txt`` may be: the dataset folder, then ImageNet's folder, then the root
        (TPT's folders have none of their own; one copy serves every variant)."""
        imagenet_dir = osp.join(self.root, "ImageNet" if self.layout == "tpt" else "imagenet")
        candidates = [osp.join(self.dataset_dir, "classnames.txt"), osp.join(imagenet_dir, "classnames.txt"),
                      osp.join(self.root, "classnames.txt")]
        return list(dict.fromkeys(candidates))

    def load_classnames(self) -> dict[str, str]:
        """``{class folder: class name}`` in label order, from ``classnames.txt``; in TPT's layout, which has
        none, from the bundled names (:meth:`bundled_classnames`), as TPT's own code does."""
        candidates = self.classnames_candidates()
        for path in candidates:
            if osp.isfile(path):
                if path != candidates[0]:
                    log.info(f"Reading class names from {path}")
                return read_classnames(path)
        tried = ", ".join(f'"{path}"' for path in candidates)
        if self.layout == "tpt":
            return self.bundled_classnames(tried)
        raise self.layout_error(f"classnames.txt not found (tried {tried})")

    # TPT's folders that hold all 1000 ImageNet class folders, named by WordNet id (sorted = label order).
    TPT_FULL_SETS = ("ImageNet/val", "ImageNet/train", "ImageNet-Sketch")

    def bundled_classnames(self, tried: str) -> dict[str, str]:
        """The bundled 1000 names (``vlprompt/imagenet_classnames.py``) keyed by WordNet id: ImageNet's label
        order is the sorted order of its 1000 class folders, so the folders of a full set under the root
        (``TPT_FULL_SETS``) give each name its id; the 200-class sets look their folders up there."""
        for relative in self.TPT_FULL_SETS:
            folder = osp.join(self.root, relative)
            wnids = list_folders(folder) if osp.isdir(folder) else []
            if len(wnids) == len(IMAGENET_CLASSNAMES):
                log.info(f"No classnames.txt: using the bundled ImageNet class names, in the order of the class "
                         f'folders of "{folder}" (as TPT does)')
                return dict(zip(wnids, IMAGENET_CLASSNAMES))
        full = ", ".join(f'"{osp.join(self.root, relative)}"' for relative in self.TPT_FULL_SETS)
        raise self.layout_error(
            f"classnames.txt not found (tried {tried}), and none of {full} holds the {len(IMAGENET_CLASSNAMES)} "
            "class folders that would order the bundled class names; put ImageNet's classnames.txt in "
            "DATASET.ROOT"
        )

    def names_for(self, folders: Sequence[str], classnames: dict[str, str], source: str) -> list[str]:
        unknown = [folder for folder in folders if folder not in classnames]
        if unknown:
            raise UserValueError(
                f'{type(self).__name__}: class folder(s) {", ".join(unknown[:5])} of "{source}" are not listed in '
                f"classnames.txt; it must hold ImageNet's 1000 '<wnid> <class name>' lines"
            )
        return [classnames[folder] for folder in folders]


class ImageNetTestSet(ImageNetFamily):
    """ImageNet-V2/-Sketch/-A/-R: test only (``train_x`` and ``test`` are the same list, as CoOp's),
    ``DATASET.NUM_SHOTS`` and ``DATASET.SUBSAMPLE_CLASSES`` are ignored and nothing is written."""

    def __init__(self, cfg) -> None:
        self.setup_paths(cfg)
        ignored = []
        if cfg.DATASET.NUM_SHOTS >= 1:
            ignored.append("DATASET.NUM_SHOTS")
        if getattr(cfg.DATASET, "SUBSAMPLE_CLASSES", "all") != "all":
            ignored.append("DATASET.SUBSAMPLE_CLASSES")
        if ignored:
            log.info(f"Note: {type(self).__name__} is test-only; {' and '.join(ignored)} ignored")
        data = self.read_splits()["test"]
        DatasetBase.__init__(self, train_x=data, test=data)

    def read_splits(self, save: bool = True) -> dict[str, list]:
        if not osp.isdir(self.image_dir):
            raise self.layout_error(f'image folder not found: "{self.image_dir}"')
        return {"test": self.read_data(self.load_classnames())}

    def read_data(self, classnames: dict[str, str]) -> list:
        """Labels = index among the sorted class folders present; names looked up in classnames.txt."""
        folders = list_folders(self.image_dir)
        if not folders:
            raise self.layout_error(f'no class folders in "{self.image_dir}"')
        return folder_items(self.image_dir, folders, self.names_for(folders, classnames, self.image_dir))


class FewShotImageNet(ImageNetFamily):
    """ImageNet itself: train and val folders of ``<wnid>`` class folders; val serves as val and test."""

    def __init__(self, cfg) -> None:
        self.setup_paths(cfg)
        splits = self.read_splits()
        train, test = splits["train"], splits["test"]
        if cfg.DATASET.NUM_SHOTS >= 1 and train:
            # CoOp samples (and caches) only the training split here; val stays the full test split.
            train, _ = load_or_create_fewshot(self.dataset_dir, osp.basename(self.dataset_dir), train, None,
                                              cfg.DATASET.NUM_SHOTS, cfg.SEED)
        subsample = getattr(cfg.DATASET, "SUBSAMPLE_CLASSES", "all")
        if train:
            train, test = subsample_classes(train, test, subsample=subsample)
        else:  # TPT's layout without train/: the labels to split come from val
            (test,) = subsample_classes(test, subsample=subsample)
        self.shots_per_class = fewshot_shortfall(train, cfg.DATASET.NUM_SHOTS)
        DatasetBase.__init__(self, train_x=train, val=test, test=test)

    def read_splits(self, save: bool = True) -> dict[str, list]:
        classnames = self.load_classnames()
        train_dir, val_dir = osp.join(self.image_dir, "train"), osp.join(self.image_dir, "val")
        train_needed = self.layout == "coop"  # TPT evaluates on ImageNet/val alone
        for split_dir, needed in ((val_dir, True), (train_dir, train_needed)):
            if needed and not osp.isdir(split_dir):
                raise self.layout_error(f'folder not found: "{split_dir}"')
        val_folders = self.split_folders(val_dir)
        splits = {"train": [], "test": folder_items(val_dir, val_folders, self.names_for(val_folders, classnames, val_dir))}
        if osp.isdir(train_dir):
            train_folders = self.split_folders(train_dir)
            if train_folders != val_folders:
                only_train = sorted(set(train_folders) - set(val_folders))[:5]
                only_val = sorted(set(val_folders) - set(train_folders))[:5]
                raise UserValueError(
                    f'ImageNet: "{train_dir}" and "{val_dir}" must hold the same class folders (labels are their '
                    f"sorted index); only in train: {only_train or 'none'}, only in val: {only_val or 'none'}"
                )
            splits["train"] = folder_items(train_dir, train_folders,
                                           self.names_for(train_folders, classnames, train_dir))
        else:
            log.info(f'Note: no "{train_dir}"; ImageNet is test-only here')
        return splits

    def split_folders(self, split_dir: str) -> list[str]:
        folders = list_folders(split_dir)
        if not folders:
            loose = len(list_files(split_dir))
            detail = f" but {loose} loose files" if loose else ""
            raise self.layout_error(
                f'"{split_dir}" has no class folders{detail}; its images must sit in <wnid>/ folders '
                "(ImageNet's val archive is flat: sort it into class folders, see DATASETS.md)"
            )
        return folders
