"""Labeled data: readers of the labeled facial-expression datasets, into one type
(:class:`LabeledData`) and one label space (:data:`omnifer.labels.CLASSES`).

Formats: RAF-DB basic (:mod:`~omnifer.labeled.rafdb`), FERPlus (:mod:`~omnifer.labeled.ferplus`),
AffectNet (:mod:`~omnifer.labeled.affectnet`), image folders ``ROOT/<class>/*``
(:mod:`~omnifer.labeled.folder`); :func:`read_dataset` picks one by name. ("Datasets" in
omnifer means the catalog's six datasets; this package reads *labeled* data.)
"""

from omnifer.labeled.affectnet import AFFECTNET_DROP_RULES, read_affectnet
from omnifer.labeled.base import LabeledData, hard_labels, read_image, read_image_why
from omnifer.labeled.ferplus import (
    FERPLUS_DROP_RULES,
    FERPLUS_MODES,
    LabelMode,
    ferplus_target,
    read_ferplus,
)
from omnifer.labeled.folder import class_folders, list_images, read_image_folder
from omnifer.labeled.formats import FORMATS, read_dataset
from omnifer.labeled.rafdb import read_rafdb

__all__ = [
    "AFFECTNET_DROP_RULES", "FERPLUS_DROP_RULES", "FERPLUS_MODES", "FORMATS", "LabelMode",
    "LabeledData", "class_folders", "ferplus_target", "hard_labels", "list_images",
    "read_affectnet", "read_dataset", "read_ferplus", "read_image", "read_image_folder",
    "read_image_why", "read_rafdb",
]
