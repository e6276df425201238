"""A hospital's own images (folder and DICOM sources) reach training in the consortium's class order, or are
refused by name."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pydicom
import pytest
import torch
from pydantic import ValidationError

from scripts.settings_env import child_environment
from services.hospital_node.config import DataSettings, HospitalNodeSettings
from services.hospital_node.data.image_loaders import DatasetFormatError, load_dicom_class_folders
from services.hospital_node.data.local_data import LocalData, load_local_data
from tests.hospital_node.image_files import CT_SMALL, MR_SMALL, RT_PLAN, pydicom_file, write_grey_png

REPO = Path(__file__).resolve().parents[2]


def _load(settings: HospitalNodeSettings) -> LocalData:
    return load_local_data(DataSettings.of(settings))


def _settings(**values: object) -> HospitalNodeSettings:
    return HospitalNodeSettings(insecure=True, image_size=16, validation_fraction=0.25, **values)  # type: ignore[arg-type]


def _all_labels(settings: HospitalNodeSettings) -> list[int]:
    data = _load(settings)
    return sorted(data.train_labels.tolist() + data.val_labels.tolist())


def test_a_hospital_without_one_class_folder_keeps_the_consortiums_label_order(tmp_path: Path) -> None:
    # This hospital saw no NORMAL images. Its PNEUMONIA images are class 1 at every hospital, not its own class 0.
    for index in range(4):
        write_grey_png(tmp_path / "train" / "PNEUMONIA" / f"{index}.png", 200)
    labels = _all_labels(_settings(data_source="folder", data_path=tmp_path, class_names="NORMAL,PNEUMONIA"))
    assert labels == [1, 1, 1, 1]


def test_a_hospital_whose_folders_do_not_number_the_classes_is_refused_by_name(tmp_path: Path) -> None:
    for index in range(4):
        write_grey_png(tmp_path / "train" / "PNEUMONIA" / f"{index}.png", 200)
    with pytest.raises(DatasetFormatError, match=r"1 classes \['PNEUMONIA'\].*trains 2.*FEDXRAY_NODE_CLASS_NAMES"):
        _load(_settings(data_source="folder", data_path=tmp_path))
    for index in range(2):
        write_grey_png(tmp_path / "train" / "COVID" / f"{index}.png", 90)
        write_grey_png(tmp_path / "train" / "NORMAL" / f"{index}.png", 30)
    with pytest.raises(DatasetFormatError, match="3 classes"):
        _load(_settings(data_source="folder", data_path=tmp_path))
    # Named, the third folder is an error naming it; allowed, it is skipped and the other two keep their places.
    with pytest.raises(DatasetFormatError, match="folder 'COVID' is not one of the class names"):
        _load(_settings(data_source="folder", data_path=tmp_path, class_names="NORMAL,PNEUMONIA"))
    labels = _all_labels(_settings(data_source="folder", data_path=tmp_path, class_names="NORMAL,PNEUMONIA",
                                   allow_extra_folders=True))
    assert labels == [0, 0, 1, 1, 1, 1]


def test_a_folder_of_only_bad_files_is_refused_by_name(tmp_path: Path) -> None:
    (tmp_path / "train" / "NORMAL").mkdir(parents=True)
    (tmp_path / "train" / "NORMAL" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    with pytest.raises(DatasetFormatError, match=r"no usable images \(1 files skipped\)"):
        _load(_settings(data_source="folder", data_path=tmp_path, class_names="NORMAL,OPACITY"))


def test_dicom_class_folders_label_pydicoms_real_files_by_folder(tmp_path: Path) -> None:
    (tmp_path / "NORMAL").mkdir()
    (tmp_path / "ABNORMAL" / "series-1").mkdir(parents=True)
    (tmp_path / "OTHER").mkdir()
    shutil.copy(pydicom_file(CT_SMALL), tmp_path / "NORMAL" / "ct")
    shutil.copy(pydicom_file(MR_SMALL), tmp_path / "ABNORMAL" / "series-1" / "mr")  # nested below the class
    shutil.copy(pydicom_file(RT_PLAN), tmp_path / "ABNORMAL" / "plan")  # no pixel data
    shutil.copy(pydicom_file(CT_SMALL), tmp_path / "stray")  # outside any class folder
    shutil.copy(pydicom_file(MR_SMALL), tmp_path / "OTHER" / "mr")  # not one of the named classes

    with pytest.raises(DatasetFormatError, match="folder 'OTHER' is not one of the class names"):
        load_dicom_class_folders(tmp_path, 16, ("NORMAL", "ABNORMAL"))
    dataset = load_dicom_class_folders(tmp_path, 16, ("NORMAL", "ABNORMAL"), allow_extra_folders=True)
    assert dataset.labels.tolist() == [1, 0]  # sorted paths: ABNORMAL/series-1/mr, NORMAL/ct
    assert all("PatientName" not in header and "PatientID" not in header for header in dataset.headers)
    reasons = {str(Path(s.path).relative_to(tmp_path)): s.reason for s in dataset.skipped}
    assert set(reasons) == {"ABNORMAL/plan", "stray", "OTHER/mr"}
    assert "no pixel data" in reasons["ABNORMAL/plan"]
    assert "not inside a class folder" in reasons["stray"]
    assert "not a known class" in reasons["OTHER/mr"]
    # Without names, the sorted class folders are the classes: three here.
    assert load_dicom_class_folders(tmp_path, 16).class_names == ("ABNORMAL", "NORMAL", "OTHER")
    with pytest.raises(DatasetFormatError, match="no such DICOM folder"):
        load_dicom_class_folders(tmp_path / "missing", 16)


def test_a_dicom_hospital_trains_on_labelled_images(tmp_path: Path) -> None:
    (tmp_path / "NORMAL").mkdir()
    (tmp_path / "ABNORMAL").mkdir()
    for index in range(3):
        shutil.copy(pydicom_file(CT_SMALL), tmp_path / "NORMAL" / f"ct{index}")
        shutil.copy(pydicom_file(MR_SMALL), tmp_path / "ABNORMAL" / f"mr{index}")
    labels = _all_labels(_settings(data_source="dicom", data_path=tmp_path, class_names="NORMAL,ABNORMAL"))
    assert labels == [0, 0, 0, 1, 1, 1]


def test_class_names_are_parsed_from_the_environment_and_checked(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FEDXRAY_NODE_INSECURE", "true")
    monkeypatch.setenv("FEDXRAY_NODE_CLASS_NAMES", "NORMAL, PNEUMONIA,COVID")
    monkeypatch.setenv("FEDXRAY_NODE_NUM_CLASSES", "3")
    assert HospitalNodeSettings().class_names == ("NORMAL", "PNEUMONIA", "COVID")
    monkeypatch.setenv("FEDXRAY_NODE_NUM_CLASSES", "2")
    with pytest.raises(ValidationError, match="names 3 classes; num_classes is 2"):
        HospitalNodeSettings()
    monkeypatch.setenv("FEDXRAY_NODE_CLASS_NAMES", "NORMAL,NORMAL")
    with pytest.raises(ValidationError, match="repeats a name"):
        HospitalNodeSettings()
    monkeypatch.setenv("FEDXRAY_NODE_CLASS_NAMES", "NORMAL,")
    with pytest.raises(ValidationError, match="empty name"):
        HospitalNodeSettings()


@pytest.mark.e2e  # starts the node's own process
def test_the_node_process_refuses_unusable_images_with_a_named_error(tmp_path: Path) -> None:
    for index in range(3):
        write_grey_png(tmp_path / "train" / "PNEUMONIA" / f"{index}.png", 200)
    settings = HospitalNodeSettings(data_source="folder", data_path=tmp_path, image_size=16, insecure=True)
    env = child_environment({**os.environ, "PYTHONPATH": str(REPO)}, settings)
    done = subprocess.run([sys.executable, "-m", "services.hospital_node"], env=env, cwd=REPO, capture_output=True,
                          text=True, timeout=180)
    assert done.returncode == 2, done.stderr[-2000:]
    logged = done.stdout + done.stderr
    assert "cannot load this hospital's images" in logged and "FEDXRAY_NODE_CLASS_NAMES" in logged
    assert "Traceback" not in logged


def test_a_misspelled_class_folder_is_an_error_naming_it_and_the_closest_class(tmp_path: Path) -> None:
    """The mistake a new user made: `PNUEMONIA` was skipped with one warning, and the hospital joined with one
    class (counts [60, 0]) and a validation accuracy of 1.000."""
    write_grey_png(tmp_path / "train" / "NORMAL" / "a.png", 30)
    write_grey_png(tmp_path / "train" / "PNUEMONIA" / "b.png", 200)
    with pytest.raises(DatasetFormatError) as misspelled:
        _load(_settings(data_source="folder", data_path=tmp_path, class_names="NORMAL,PNEUMONIA"))
    assert "folder 'PNUEMONIA' is not one of the class names ['NORMAL', 'PNEUMONIA']; did you mean " \
           "'PNEUMONIA'? Rename the folder" in str(misspelled.value)


def test_a_lowercase_folder_gives_the_sorted_order_which_the_join_then_refuses(tmp_path: Path) -> None:
    """Without CLASS_NAMES the sorted folders are the classes: `normal` sorts after `PNEUMONIA`, so this
    hospital's labels are swapped against everyone else's. It sends these names when it joins, and the aggregator
    refuses them (tests/aggregator/test_membership.py, tests/e2e/test_own_images.py)."""
    for index in range(2):
        write_grey_png(tmp_path / "train" / "normal" / f"{index}.png", 30)
        write_grey_png(tmp_path / "train" / "PNEUMONIA" / f"{index}.png", 200)
    data = _load(_settings(data_source="folder", data_path=tmp_path))
    assert data.classes is not None and data.classes.names == ("PNEUMONIA", "normal")


def test_a_class_without_images_is_a_loud_warning_and_shows_in_the_roster(tmp_path: Path,
                                                                          caplog: pytest.LogCaptureFixture) -> None:
    for index in range(4):
        write_grey_png(tmp_path / "train" / "NORMAL" / f"{index}.png", 30)
    (tmp_path / "train" / "PNEUMONIA").mkdir()
    with caplog.at_level("WARNING"):
        data = _load(_settings(data_source="folder", data_path=tmp_path, class_names="NORMAL,PNEUMONIA"))
    assert data.classes is not None and data.classes.counts == (4, 0)
    assert "NORMAL 4, PNEUMONIA 0 (NONE)" == data.classes.table()
    assert any("!!! hospital-1 has NO images of PNEUMONIA" in r.getMessage() for r in caplog.records)


def test_val_then_test_folders_are_the_validation_split_and_the_log_says_which(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    for index in range(4):
        write_grey_png(tmp_path / "train" / "NORMAL" / f"{index}.png", 30)
        write_grey_png(tmp_path / "train" / "PNEUMONIA" / f"{index}.png", 200)
    for index in range(3):
        write_grey_png(tmp_path / "test" / "NORMAL" / f"{index}.png", 30)
    write_grey_png(tmp_path / "test" / "PNEUMONIA" / "0.png", 200)
    settings = _settings(data_source="folder", data_path=tmp_path, class_names="NORMAL,PNEUMONIA")
    with caplog.at_level("INFO"):
        data = _load(settings)
    assert data.train_labels.numel() == 8 and sorted(data.val_labels.tolist()) == [0, 0, 0, 1]
    assert any("validation: " in r.getMessage() and "/test (4 images); no val/ folder" in r.getMessage()
               for r in caplog.records)
    write_grey_png(tmp_path / "val" / "NORMAL" / "0.png", 30)
    write_grey_png(tmp_path / "val" / "PNEUMONIA" / "0.png", 200)
    assert sorted(_load(settings).val_labels.tolist()) == [0, 1]  # val/ wins over test/
    (tmp_path / "val").rename(tmp_path / "elsewhere")
    (tmp_path / "test").rename(tmp_path / "elsewhere2")
    with caplog.at_level("INFO"):
        caplog.clear()
        data = _load(settings)
    assert data.train_labels.numel() + data.val_labels.numel() == 8  # a random 25% of train/
    assert any("a random 25% of the images" in r.getMessage() and "no val/ or test/ folder" in r.getMessage()
               for r in caplog.records)


def _patient_folder(root: Path, with_val: bool) -> None:
    for index in range(6):
        write_grey_png(root / "train" / "NORMAL" / f"n{index}.png", 40 + index)
        write_grey_png(root / "train" / "PNEUMONIA" / f"p{index}.png", 200 - index)
    if with_val:
        write_grey_png(root / "val" / "NORMAL" / "v.png", 40)
        write_grey_png(root / "val" / "PNEUMONIA" / "v.png", 200)
    # Patient A holds three NORMAL images, patient B the other three, each PNEUMONIA image its own patient.
    lines = ["image,patient"] + [f"train/NORMAL/n{i}.png,{'A' if i < 3 else 'B'}" for i in range(6)] + [
        f"train/PNEUMONIA/p{i}.png,P{i}" for i in range(6)]
    (root / "patients.csv").write_text("\n".join(lines) + "\n")


@pytest.mark.parametrize("with_val", [True, False])
def test_patients_csv_makes_the_patient_the_privacy_unit_of_folder_data(tmp_path: Path, with_val: bool) -> None:
    _patient_folder(tmp_path, with_val)
    data = _load(_settings(data_source="folder", data_path=tmp_path, class_names="NORMAL,PNEUMONIA"))
    assert data.privacy_unit == "patient"
    units = data.privacy_units()
    assert units.numel() == data.train_labels.numel() == (12 if with_val else 9)
    # The images of one patient share one unit: the NORMAL images fall in two units at most.
    normal = units[data.train_labels == 0]
    assert torch.unique(normal).numel() <= 2 and data.unit_count < data.train_labels.numel()


def test_without_patients_csv_folder_data_is_protected_per_image(tmp_path: Path) -> None:
    _patient_folder(tmp_path, True)
    (tmp_path / "patients.csv").unlink()
    data = _load(_settings(data_source="folder", data_path=tmp_path, class_names="NORMAL,PNEUMONIA"))
    assert data.privacy_unit == "image" and data.unit_count == data.train_labels.numel() == 12


def test_a_patients_csv_that_misses_an_image_is_refused_naming_it(tmp_path: Path) -> None:
    _patient_folder(tmp_path, True)
    lines = (tmp_path / "patients.csv").read_text().splitlines()
    (tmp_path / "patients.csv").write_text("\n".join(lines[:-1]) + "\n")
    with pytest.raises(DatasetFormatError, match=r"no patient for 1 images, such as train/PNEUMONIA/p5.png"):
        _load(_settings(data_source="folder", data_path=tmp_path, class_names="NORMAL,PNEUMONIA"))


def _dicom_of(patient_id: str | None, issuer: str, path: Path) -> None:
    """pydicom's CT file, relabelled as `patient_id`'s (from `issuer`); None: no PatientID at all."""
    dataset = pydicom.dcmread(pydicom_file(CT_SMALL))
    if patient_id is None:
        del dataset.PatientID
    else:
        dataset.PatientID = patient_id
    dataset.IssuerOfPatientID = issuer
    path.parent.mkdir(parents=True, exist_ok=True)
    dataset.save_as(path)


def test_dicom_patient_id_makes_the_patient_the_privacy_unit_and_never_leaves_the_loader(tmp_path: Path) -> None:
    # Patient 7 of hospital A has three images; the same ID from issuer B is another patient.
    for index in range(3):
        _dicom_of("7", "A", tmp_path / "NORMAL" / f"a7-{index}.dcm")
    _dicom_of("7", "B", tmp_path / "NORMAL" / "b7.dcm")
    for index in range(4):
        _dicom_of(f"P{index}", "A", tmp_path / "ABNORMAL" / f"p{index}.dcm")
    loaded = load_dicom_class_folders(tmp_path, 16, ("NORMAL", "ABNORMAL"))
    assert loaded.patients is not None
    by_file = dict(zip(sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*.dcm")), loaded.patients.tolist()))
    assert by_file["NORMAL/a7-0.dcm"] == by_file["NORMAL/a7-1.dcm"] == by_file["NORMAL/a7-2.dcm"]
    assert by_file["NORMAL/b7.dcm"] != by_file["NORMAL/a7-0.dcm"]
    assert len(set(loaded.patients.tolist())) == 6
    assert all("PatientID" not in header for header in loaded.headers)
    data = _load(_settings(data_source="dicom", data_path=tmp_path, class_names="NORMAL,ABNORMAL"))
    assert data.privacy_unit == "patient"
    assert data.unit_count < data.train_labels.numel()


def test_one_dicom_file_without_patient_id_makes_the_image_the_unit(tmp_path: Path) -> None:
    for index in range(3):
        _dicom_of("7", "A", tmp_path / "NORMAL" / f"a{index}.dcm")
    _dicom_of(None, "A", tmp_path / "NORMAL" / "anonymous.dcm")
    for index in range(4):
        _dicom_of(f"P{index}", "A", tmp_path / "ABNORMAL" / f"p{index}.dcm")
    assert load_dicom_class_folders(tmp_path, 16, ("NORMAL", "ABNORMAL")).patients is None
    data = _load(_settings(data_source="dicom", data_path=tmp_path, class_names="NORMAL,ABNORMAL"))
    assert data.privacy_unit == "image" and data.unit_count == data.train_labels.numel()
