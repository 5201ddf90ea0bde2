"""Models beyond the built-in CNN: pretrained backbones, ONNX models, calibrated confidence.

Real parts: torch.onnx export, onnxruntime, the model registry in a real catalog, the CLI.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from omnifer.catalog import DataCatalog
from omnifer.curation.scoring import Scorer
from omnifer.curation.selection import SelectionPolicy, adapt_policy, select_samples
from omnifer.errors import ModelFileError, OmniferError
from omnifer.labeled import read_rafdb
from omnifer.models import versions
from omnifer.models.checkpoints import load_checkpoint, read_card


def _cli(*args: str, code: int = 0) -> str:
    from omnifer.cli import app

    res = CliRunner().invoke(app, [str(a) for a in args])
    if code == 0:
        assert res.exit_code == 0, (args, res.output, res.exception)
        return res.output
    # main() prints an OmniferError as one line and exits with its code
    assert isinstance(res.exception, OmniferError), (args, res.output, res.exception)
    assert res.exception.exit_code == code and "\n" not in str(res.exception)
    return str(res.exception)


def _import_args(onnx: Path, version: str, card, *extra: str) -> list[str]:
    return ["models", "import-onnx", str(onnx), "--version", version,
            "--classes", ",".join(card.classes), "--mean", ",".join(map(str, card.mean)),
            "--std", ",".join(map(str, card.std)), "--color", "bgr", *extra]


# -- ONNX ----------------------------------------------------------------------------------------
def test_onnx_export_scores_and_curates_like_the_checkpoint(
    tmp_path: Path, tiny_model: Path, small_world: Path, data_catalog: DataCatalog
) -> None:
    """A fercnn_small checkpoint exported to ONNX and imported gives the same probabilities
    (within 1e-4), embeddings, similarities and curated rows through onnxruntime."""
    from omnifer.models.onnx_import import export_onnx

    # The checkpoint as calibrated (a temperature in its card; the weights are unchanged).
    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    for f in tiny_model.iterdir():
        if f.is_file():
            (ckpt / f.name).write_bytes(f.read_bytes())
    card = json.loads((ckpt / "card.json").read_text())
    card["temperature"] = 0.7
    (ckpt / "card.json").write_text(json.dumps(card))
    torch_model = load_checkpoint(ckpt)
    assert torch_model.card.arch == "fercnn_small"
    onnx_file = export_onnx(torch_model, tmp_path / "fer.onnx")

    out = _cli(*_import_args(onnx_file, "v7", torch_model.card, "--input-size",
                             str(torch_model.card.input_size), "--logits-output", "logits",
                             "--embedding-output", "features", "--labeled",
                             small_world / "labeled", "--format", "rafdb", "--split", "train",
                             "--temperature", "0.7", "--promote"))
    assert "registered v7" in out and "promoted" in out
    assert versions.primitive_model(data_catalog)[0] == "v7"
    lineage = json.loads(versions.history(data_catalog, "v7")["train_datasets"])
    assert lineage["onnx"]["file"] == "fer.onnx" and len(lineage["onnx"]["sha256"]) == 64

    version, uri = versions.primitive_model(data_catalog)
    onnx_model = load_checkpoint(versions.local_checkpoint(uri, version))
    assert onnx_model.card.kind == "onnx" and onnx_model.card.temperature == 0.7
    crops = np.concatenate([read_rafdb(small_world / "labeled", split).images
                            for split in ("train", "test")])
    a = Scorer(torch_model, batch_size=16).score(crops)
    b = Scorer(onnx_model, batch_size=16).score(crops)
    assert np.abs(a.probs - b.probs).max() < 1e-4
    assert np.abs(a.embedding - b.embedding).max() < 1e-4
    assert np.abs(a.similarity - b.similarity).max() < 1e-4
    assert np.array_equal(a.label, b.label) and np.array_equal(a.flip_agreement,
                                                                b.flip_agreement)
    raw = Scorer(torch_model, calibrated=False).score(crops)
    assert np.abs(raw.probs - a.probs).max() > 1e-3  # the temperature is applied, not ignored

    # Same curated rows, with every gate in play (thresholds at the medians).
    ids = [f"face{i:03d}" for i in range(len(crops))]
    policy = SelectionPolicy(min_confidence=float(np.median(a.confidence)),
                             min_similarity=float(np.median(a.similarity)),
                             require_flip_agreement=True)
    rows = [select_samples(s.to_arrow(ids), policy).select(["face_id", "label", "copies"])
            .to_pylist() for s in (a, b)]
    assert rows[0] == rows[1] and 0 < len(rows[0]) < len(crops)


def _tiny_onnx(path: Path, input_shape: list, classes: int = 7) -> Path:
    """A valid ONNX classifier made with onnx.helper: mean-pool each channel, then a matrix."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    channels = 3
    w = numpy_helper.from_array(np.linspace(-1, 1, channels * classes, dtype=np.float32)
                                .reshape(channels, classes), "w")
    rank = len(input_shape)
    nodes = [helper.make_node("ReduceMean", ["input", "axes"], ["pooled"], keepdims=0),
             helper.make_node("MatMul", ["pooled", "w"], ["logits"])]
    axes = numpy_helper.from_array(np.arange(2, rank, dtype=np.int64), "axes")
    graph = helper.make_graph(
        nodes, "tiny", [helper.make_tensor_value_info("input", TensorProto.FLOAT, input_shape)],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["n", classes])],
        initializer=[w, axes])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def test_import_onnx_refuses_bad_files_in_one_line_and_works_without_embeddings(
    tmp_path: Path, tiny_model: Path, data_catalog: DataCatalog
) -> None:
    card = read_card(tiny_model)  # seven class names, mean/std
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"this is not a protobuf" * 10)
    assert "not a model onnxruntime can load" in _cli(*_import_args(junk, "v2", card), code=3)
    rank3 = _tiny_onnx(tmp_path / "rank3.onnx", ["n", 3, 64])
    assert "rank 3" in _cli(*_import_args(rank3, "v2", card), code=3)
    dynamic = _tiny_onnx(tmp_path / "dynamic.onnx", ["n", 3, "h", "w"])
    assert "--input-size" in _cli(*_import_args(dynamic, "v2", card), code=3)
    eight = _tiny_onnx(tmp_path / "eight.onnx", ["n", 3, 32, 32], classes=8)
    msg = _cli(*_import_args(eight, "v2", card), code=3)
    assert "gives 8 scores per image" in msg and "names 7" in msg
    gray = _cli("models", "import-onnx", eight, "--version", "v2", "--classes",
                ",".join(card.classes), "--mean", "0.5", "--std", "0.5", "--color", "gray",
                code=3)
    assert "3 channel(s) but --color gray" in gray
    assert data_catalog.read("models").num_rows == 0  # nothing was registered

    # A valid file with only class scores and a dynamic size fixed by --input-size.
    out = _cli(*_import_args(dynamic, "v2", card, "--input-size", "24", "--promote"))
    assert "no --embedding-output" in out
    version, uri = versions.primitive_model(data_catalog)
    model = load_checkpoint(versions.local_checkpoint(uri, version))
    assert model.card.input_size == 24 and model.card.onnx["output_kind"] == "logits"
    crops = np.random.default_rng(0).integers(0, 256, (5, 40, 40, 3), dtype=np.uint8)
    scores = Scorer(model, batch_size=2).score(crops)
    assert np.allclose(scores.probs.sum(1), 1, atol=1e-5) and scores.embedding.shape == (5, 0)
    table = scores.to_arrow([f"f{i}" for i in range(5)])
    assert table["similarity"].null_count == 5
    # Selection without similarity: the gate is dropped, and the policy says so.
    policy = adapt_policy(SelectionPolicy(min_confidence=0.0, min_similarity=0.5), table)
    assert policy.min_similarity is None and "no embeddings" in policy.note
    assert select_samples(table, policy).num_rows == 5
    assert '"note"' not in SelectionPolicy().to_json()  # unchanged text without a note
    # The model commands take the ONNX checkpoint folder like any other.
    import cv2
    import pyarrow.parquet as pq

    folder = tmp_path / "faces"
    for i, crop in enumerate(crops):
        (folder / card.classes[i % 2]).mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(folder / card.classes[i % 2] / f"{i}.png"), crop)
    ckpt = versions.local_checkpoint(uri, version)
    _cli("score", "--model", ckpt, "--images", folder, "--out", tmp_path / "s.parquet")
    scored = pq.read_table(tmp_path / "s.parquet")
    assert scored.num_rows == 5 and scored["similarity"].null_count == 5
    out = _cli("select", "--scores", tmp_path / "s.parquet", "--out", tmp_path / "c.parquet",
               "--min-confidence", "0", "--min-similarity", "0.5", "--no-require-flip")
    kept = pq.read_table(tmp_path / "c.parquet")
    assert kept.num_rows == 5 and "no embeddings" in json.loads(kept["policy"][0].as_py())["note"]
    assert "ECE" in _cli("evaluate", "--model", ckpt, "--data", folder)
    # A second import under a registered version is refused before anything is written.
    assert "already registered" in _cli(*_import_args(dynamic, "v2", card, "--input-size",
                                                      "24"), code=3)


# -- backbones ---------------------------------------------------------------------------------
def torchvision_resnet18_state_dict(num_classes: int = 1000, seed: int = 0) -> dict:
    """A state dict with the names and shapes torchvision's ``resnet18()`` writes (122
    entries), written out here from torchvision's layout, independently of omnifer's model."""
    g = torch.Generator().manual_seed(seed)
    sd: dict[str, torch.Tensor] = {}

    def conv(name: str, c_out: int, c_in: int, k: int) -> None:
        sd[f"{name}.weight"] = torch.randn(c_out, c_in, k, k, generator=g) * 0.05

    def bn(name: str, c: int) -> None:
        sd[f"{name}.weight"] = 1 + 0.1 * torch.randn(c, generator=g)
        sd[f"{name}.bias"] = 0.1 * torch.randn(c, generator=g)
        sd[f"{name}.running_mean"] = 0.1 * torch.randn(c, generator=g)
        sd[f"{name}.running_var"] = 1 + 0.1 * torch.rand(c, generator=g)
        sd[f"{name}.num_batches_tracked"] = torch.tensor(1000)

    conv("conv1", 64, 3, 7)
    bn("bn1", 64)
    c_in = 64
    for i, width in enumerate((64, 128, 256, 512), start=1):
        for b in range(2):
            p = f"layer{i}.{b}"
            conv(f"{p}.conv1", width, c_in if b == 0 else width, 3)
            bn(f"{p}.bn1", width)
            conv(f"{p}.conv2", width, width, 3)
            bn(f"{p}.bn2", width)
            if b == 0 and i > 1:  # stride 2: a projected shortcut
                conv(f"{p}.downsample.0", width, c_in, 1)
                bn(f"{p}.downsample.1", width)
        c_in = width
    sd["fc.weight"] = torch.randn(num_classes, 512, generator=g) * 0.01
    sd["fc.bias"] = torch.zeros(num_classes)
    assert len(sd) == 122
    return sd


@pytest.mark.slow
def test_resnet18_loads_torchvision_weights_and_trains_on_the_demo_world(
    tmp_path: Path, small_world: Path
) -> None:
    from safetensors.torch import load_file, save_file

    from omnifer.training.train import TrainConfig, train_model

    sd = torchvision_resnet18_state_dict()
    # A training checkpoint holding a 'state_dict' with DataParallel's 'module.' prefix.
    wrapped = tmp_path / "resnet18-ckpt.pth"
    torch.save({"epoch": 90, "state_dict": {f"module.{k}": v for k, v in sd.items()}}, wrapped)
    train = read_rafdb(small_world / "labeled", "train")
    cfg = TrainConfig(arch="resnet18", pretrained=str(wrapped), input_size=32, epochs=2,
                      batch_size=32, lr=3e-3, freeze_stages=2, backbone_lr_scale=0.1,
                      val_fraction=0, patience=0, threads=2, seed=0)
    card = train_model(train, cfg, tmp_path / "m")
    pre = card.metrics["pretrained"]
    assert (pre["loaded"], pre["total"]) == (120, 120) and pre["stripped_prefix"] == "module."
    assert pre["missing"] == [] and pre["unexpected"] == []
    assert pre["head"] == ["fc.bias", "fc.weight"]
    assert card.mean == [0.406, 0.456, 0.485]  # ImageNet's, in the pipeline's BGR order
    from omnifer.models.loading import card_lines

    line = card_lines(card)[0]  # what `omnifer train` prints
    assert "loaded 120 of 120 tensors of resnet18" in line and "missing: none" in line
    assert "head replaced (fc.bias, fc.weight)" in line and "stripped 'module.'" in line

    weights = load_file(str(tmp_path / "m" / "model.safetensors"))
    assert weights["fc.weight"].shape == (7, 512)  # head replaced for the 7 classes
    # RGB filters reordered for BGR input; frozen stages (stem, layer1) kept, BN stats too.
    assert torch.equal(weights["conv1.weight"], sd["conv1.weight"].flip(1))
    for key in ("layer1.1.conv2.weight", "layer1.0.bn1.running_mean", "bn1.running_var"):
        assert torch.equal(weights[key], sd[key]), key
    assert not torch.equal(weights["layer4.1.conv2.weight"], sd["layer4.1.conv2.weight"])
    loaded = load_checkpoint(tmp_path / "m")
    scores = Scorer(loaded).score(read_rafdb(small_world / "labeled", "test").images)
    assert scores.embedding.shape[1] == 512 and np.isfinite(scores.similarity).all()

    # The same weights as safetensors load too; a file whose shapes do not fit is refused.
    flat = tmp_path / "resnet18.safetensors"
    save_file({k: v.contiguous() for k, v in sd.items()}, str(flat))
    from omnifer.models.architectures import create_model
    from omnifer.models.weights import load_pretrained

    assert load_pretrained(create_model("resnet18", 7), flat, "resnet18").loaded == 120
    bad = dict(sd, **{"layer3.0.conv1.weight": torch.zeros(256, 64, 3, 3)})
    torch.save(bad, tmp_path / "bad.pth")
    with pytest.raises(ModelFileError, match="does not fit resnet18.*layer3.0.conv1.weight") as e:
        load_pretrained(create_model("resnet18", 7), tmp_path / "bad.pth", "resnet18")
    assert "\n" not in str(e.value)
    # A file that needs pickle is refused, never unpickled.
    torch.save({"state_dict": sd, "optimizer": Path("x")}, tmp_path / "pickled.pth")
    with pytest.raises(ModelFileError, match="needs pickle"):
        load_pretrained(create_model("resnet18", 7), tmp_path / "pickled.pth", "resnet18")


def test_iresnet_has_insightface_key_names() -> None:
    """IResNet-18's keys and shapes are those of insightface's arcface_torch iresnet18 (187
    tensors) plus omnifer's classification head."""
    from omnifer.models.architectures import create_model

    model = create_model("iresnet18", 7)
    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert len([k for k in shapes if not k.startswith("head.")]) == 187
    expected = {
        "conv1.weight": (64, 3, 3, 3), "prelu.weight": (64,),
        "layer1.0.bn1.weight": (64,), "layer1.0.conv1.weight": (64, 64, 3, 3),
        "layer1.0.prelu.weight": (64,), "layer1.0.conv2.weight": (64, 64, 3, 3),
        "layer1.0.bn3.running_var": (64,), "layer1.0.downsample.0.weight": (64, 64, 1, 1),
        "layer2.0.downsample.1.weight": (128,), "layer4.1.conv2.weight": (512, 512, 3, 3),
        "bn2.weight": (512,), "fc.weight": (512, 512 * 7 * 7), "features.running_mean": (512,),
        "head.weight": (7, 512),
    }
    assert {k: shapes.get(k) for k in expected} == expected
    x = torch.randn(2, 3, 112, 112)
    assert model.eval().embed(x).shape == (2, 512) and model(x).shape == (2, 7)


# -- calibration -------------------------------------------------------------------------------
def test_temperature_fit_recovers_a_planted_temperature() -> None:
    from omnifer.models.calibration import calibrate

    rng = np.random.default_rng(0)
    logits = rng.normal(0, 3, (2, 4000, 5))
    logits[1] = logits[0] + rng.normal(0, 0.1, logits[0].shape)  # two similar views
    true_p = np.exp(logits[0] / 2.5)
    true_p /= true_p.sum(1, keepdims=True)
    labels = np.array([rng.choice(5, p=p) for p in true_p])
    cal = calibrate(logits, labels, "synthetic")
    assert cal.temperature == pytest.approx(2.5, rel=0.1)
    assert cal.ece_after < cal.ece_before and cal.nll_after < cal.nll_before


@pytest.mark.slow
def test_calibration_lowers_ece_on_the_demo_world_test_split(tmp_path: Path) -> None:
    """The demo world's labeled faces (world seed 7, 40 train per class); its test faces split
    in two: a validation half (early stopping and the temperature fit) and a test half.
    Label smoothing leaves the raw model under-confident; the fitted temperature, stored in
    the card and applied by the scorer, brings the test split's ECE down."""
    from omnifer.demo import generate_world
    from omnifer.models.calibration import expected_calibration_error
    from omnifer.training.train import TrainConfig, train_model

    generate_world(tmp_path / "world", seed=7, labeled_per_class=40, test_per_class=60,
                   unlabeled_images=0, workers=1)
    train = read_rafdb(tmp_path / "world" / "labeled", "train", size=48)
    held = read_rafdb(tmp_path / "world" / "labeled", "test", size=48)
    idx = np.arange(len(held))
    val, test = held.subset(idx[idx % 2 == 0]), held.subset(idx[idx % 2 == 1])
    card = train_model(train, TrainConfig(input_size=48, epochs=12, patience=0, seed=0),
                       tmp_path / "m", val=val)
    cal = card.calibration
    assert cal["n"] == len(val) and cal["split"] == "val" and card.temperature < 1
    assert cal["nll_after"] < cal["nll_before"]

    model = load_checkpoint(tmp_path / "m")
    y = test.remapped(model.classes).hard_labels()
    raw = Scorer(model, calibrated=False).score(test.images)
    calibrated = Scorer(model).score(test.images)
    assert (raw.label == calibrated.label).mean() > 0.95  # flip TTA: rarely a class changes
    before = expected_calibration_error(raw.probs, y)
    after = expected_calibration_error(calibrated.probs, y)
    print(f"test ECE {before:.3f} -> {after:.3f} (T {card.temperature:.3f}, accuracy "
          f"{(raw.label == y).mean():.3f})")
    assert after < 0.8 * before


# -- any model kind through the nightly flow ---------------------------------------------------
@pytest.mark.slow
def test_nightly_flow_mines_with_an_onnx_model_and_retrains_a_torch_student(
    prefect_harness, tmp_path: Path, small_world: Path, tiny_model: Path,
    data_catalog: DataCatalog, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """An imported ONNX model (no embedding output) is the primitive model: the night is
    scored through onnxruntime, selection drops the similarity gate and says so, and the
    retrain trains a torch student on the teacher's soft targets and tests it against the
    ONNX teacher."""
    from flows.ingest import nightly_ingest
    from omnifer.models.onnx_import import export_onnx

    monkeypatch.setenv("OMNIFER_SELECTION", json.dumps(
        {"min_confidence": 0.0, "default_confidence": 0.0, "min_similarity": 0.5,
         "require_flip_agreement": False}))
    torch_model = load_checkpoint(tiny_model)
    onnx_file = export_onnx(torch_model, tmp_path / "teacher.onnx")
    _cli(*_import_args(onnx_file, "v1", torch_model.card, "--input-size", "64",
                       "--logits-output", "logits", "--promote"))
    retrain = {"enabled": True, "min_new_curated": 1, "recipe": "curated",
               "curated_teacher_weight": 0.5,
               "labeled": {"path": str(small_world / "labeled"), "format": "rafdb"},
               "train": {"epochs": 2, "device": "cpu", "val_fraction": 0.0}}
    summary = nightly_ingest(date="2026-11-29", sources=[str(small_world / "unlabeled")],
                             shard_size=20, workers=1, retrain=retrain)
    assert summary["model_version"] == "v1" and summary["selected"] > 0
    con = data_catalog.connect()
    n, sims, embs = con.execute("SELECT count(*), count(similarity), count(embedding) "
                                "FROM scores WHERE status = 'ok'").fetchone()
    assert n == summary["faces"] > 0 and sims == 0 and embs == 0
    policies = {r[0] for r in con.execute("SELECT DISTINCT policy FROM curated").fetchall()}
    policy = SelectionPolicy.model_validate_json(policies.pop())
    assert not policies and policy.min_similarity is None and "no embeddings" in policy.note

    r = summary["retraining"]["retrain"]
    assert r["model_version"] == "v2" and r["parent_version"] == "v1"
    lineage = json.loads(versions.history(data_catalog, "v2")["train_datasets"])
    assert lineage["teacher"] == {"model_version": "v1", "kind": "onnx", "curated_weight": 0.5}
    verdict = con.execute("SELECT event, metrics FROM models WHERE model_version = 'v2' AND "
                          "event <> 'registered'").fetchone()
    metrics = json.loads(verdict[1])
    teacher_acc = metrics["parent_accuracy"]  # the ONNX teacher on the labeled test split
    test = read_rafdb(small_world / "labeled", "test")
    from omnifer.training.evaluate import evaluate_model

    assert teacher_acc == pytest.approx(evaluate_model(torch_model, test)["accuracy"])
    assert verdict[0] == ("promoted" if metrics["gain"] > 0 else "rejected")
    student = read_card(versions.local_checkpoint(r["checkpoint_uri"], "v2"))
    assert student.kind == "torch" and student.arch == "fercnn_small"
    assert math.isfinite(r["accuracy"])
