"""UCF101 (middle frames, 101 actions): ``ucf101/UCF-101-midframes/<Renamed_Action>/<video>.jpg`` and
``split_zhou_UCF101.json``; without the JSON the split is built from ``ucfTrainTestlist/`` (split 1:
train list split 80/20 into train and val, and the test list)."""

from __future__ import annotations

import os.path as osp
import re

from vlprompt.compat import DATASET_REGISTRY
from vlprompt.splits import make_datum, split_trainval

from .base import SplitDataset


@DATASET_REGISTRY.register()
class UCF101(SplitDataset):
    dataset_dir = "ucf101"
    image_subdir = "UCF-101-midframes"
    tpt_dir = "UCF101"
    split_name = "UCF101"
    raw_files = ("ucfTrainTestlist/classInd.txt", "ucfTrainTestlist/trainlist01.txt",
                 "ucfTrainTestlist/testlist01.txt")
    contents = ("UCF-101-midframes/<Renamed_Action>/v_<Action>_g<nn>_c<nn>.jpg",
                "split_zhou_UCF101.json  (CoOp's split; in this folder or in DATASET.SPLIT_DIR)",
                "ucfTrainTestlist/{classInd,trainlist01,testlist01}.txt  (only used without the split file)")
    tpt_contents = ("<Renamed_Action>/v_<Action>_g<nn>_c<nn>.jpg  (the contents of UCF-101-midframes/)",
                    "split_zhou_UCF101.json  (in this folder or in DATASET.SPLIT_DIR)")

    def read_raw_split(self) -> tuple[list, list, list]:
        cname2lab = {}
        for line in self.read_text_lines("ucfTrainTestlist/classInd.txt"):
            label, action = line.split(" ")
            cname2lab[action] = int(label) - 1
        trainval = self.read_data(cname2lab, "ucfTrainTestlist/trainlist01.txt")
        test = self.read_data(cname2lab, "ucfTrainTestlist/testlist01.txt")
        train, val = split_trainval(trainval)
        return train, val, test

    def read_data(self, cname2lab: dict[str, int], text_file: str) -> list:
        """Lines ``Action/v_Action_gXX_cYY.avi [label]``; the frame is ``<A_c_t_i_o_n>/v_..._cYY.jpg`` with
        the CamelCase action split at capitals and joined by ``_`` (``ApplyEyeMakeup`` → ``Apply_Eye_Makeup``)."""
        items = []
        for line in self.read_text_lines(text_file):
            action, filename = line.split(" ")[0].split("/")
            renamed = "_".join(re.findall("[A-Z][^A-Z]*", action))
            impath = osp.join(self.image_dir, renamed, filename.replace(".avi", ".jpg"))
            items.append(make_datum(impath, cname2lab[action], renamed))
        return items
