"""UMCI training: the real trainer learns and resumes exactly; `python -m pipeline.train_umci` reads
MVTec-AD / VisA roots from local folders and a GCS emulator, skips bad inputs, and publishes a
profile that loads and predicts.

Everything runs the tiny profile's real open_clip CLIP at a 64 px input (a 4×4 patch grid) on a
few seeded synthetic images, so the file takes seconds per test on two CPU cores. Losses are
compared for exact equality: on the CPU, on one thread (fixture below), every step is deterministic.
"""
from __future__ import annotations

import contextlib
import dataclasses
import io
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from tiny.synthetic import generate_image
from clipsam.train import CHECKPOINT_NAME, TrainConfig, UMCITrainer, umci_loss
from model_store.manifest import Manifest
from model_store.store import ModelStore
from model_store.training import training_mapper
from pipeline.make_synthetic import write_synthetic_dataset
from pipeline.train_umci import main
from inputs.layouts import list_inputs
from inputs.training_data import limit_per_category, list_dataset

SIZE = 64  # CLIP input side of every run here: a multiple of the tiny CLIP's 16 px patches
CATEGORIES = ("washer", "oak_panel")  # an object and a texture: 6 + 5 defect types


@pytest.fixture(scope="module", autouse=True)
def deterministic_kernels():
    """One torch thread and deterministic kernels for this module's runs, restored afterwards.

    Module scope: the module-scoped `local_run` must train under the same settings as the tests
    comparing against it. One thread: the same numbers on any machine, and these tiny models
    gain nothing from more, while two threads on two busy cores (another process running) spin
    and make the file ~20× slower.
    """
    previous = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    yield
    torch.set_num_threads(previous[0])
    torch.use_deterministic_algorithms(previous[1])


@pytest.fixture(scope="module")
def mvtec_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A synthetic MVTec-AD root at 64 px: per category 3 good + 1 image per defect type, with masks,
    and 2 train/good images (not used unless --splits asks for them)."""
    root = tmp_path_factory.mktemp("train-data") / "mvtec"
    write_synthetic_dataset(str(root), CATEGORIES, seed=5, size=SIZE, n_train_good=2, n_test_good=3, n_test_defect=1)
    return root


@pytest.fixture
def store_copy(tiny_store: str, tmp_path: Path) -> str:
    """A private copy of the tiny store, so publishing never touches the session's store."""
    target = tmp_path / "store"
    shutil.copytree(Path(tiny_store) / "tiny", target / "tiny")
    return str(target)


def cli_args(train_data: str, store: str, work_dir: Path, *extra: str) -> list[str]:
    return [f"--train_data={train_data}", f"--model_store={store}", f"--work_dir={work_dir}",
            f"--image_size={SIZE}", "--epochs=3", "--seed=1", "--log_every=1", *extra]


def run_cli(argv: list[str]) -> tuple[int, str]:
    """main(argv) → (exit code, what it printed on stdout)."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = main(argv)
    return code, out.getvalue()


def umci_state(store: str, manifest: Manifest) -> dict[str, torch.Tensor]:
    return load_file(ModelStore(store).fetch(manifest, "umci"))


# ------------------------------------------------------------------------------- the trainer


def synthetic_samples(count: int, seed: int = 0, defect_types: list[str] | None = None) -> list:
    """`count` images per category at 64 px, two thirds of them defective."""
    return [generate_image(c, seed=seed, index=i, anomalous=i % 3 != 0, size=SIZE, split="train-test",
                           defect_types=defect_types if i % 3 else None)
            for c in CATEGORIES for i in range(count)]


def new_trainer(store: str, samples: list, config: TrainConfig) -> UMCITrainer:
    base = ModelStore(store).read_manifest("tiny")
    return UMCITrainer(training_mapper(store, base, "cpu", "fresh", seed=config.seed), samples, config)


def test_focal_loss_keeps_its_gradient_on_a_saturated_map() -> None:
    """A layer whose softmax says "normal" with p ≈ 1 − 1e-20 on a defect pixel must still be
    pushed back: the loss is read in log space, never from a clamped probability."""
    logits = torch.zeros(1, 2, 2, 2)
    logits[:, 0] = 46.0  # log-odds of ~1e20 for "normal"
    logits.requires_grad_(True)
    target = torch.tensor([[[True, False], [False, False]]])
    loss = umci_loss([torch.log_softmax(logits, dim=1)], target)
    loss.backward()
    assert float(loss.detach()) > 10.0  # the defect pixel costs ~46 / 4 pixels
    assert float(logits.grad[0, 1, 0, 0]) < -0.2  # the defect pixel's abnormal logit is pushed up


def test_training_lowers_the_loss_by_a_third(tiny_store: str) -> None:
    """Stains and holes (up to 8 % of the image) can be localised on the 4×4 token grid of a
    64 px input; lr 3e-3 leaves the all-normal plateau (focal + dice ≈ 1 per layer) within the
    few steps a fast test affords (the default 1e-3 needs far more images and epochs)."""
    config = TrainConfig(epochs=12, image_size=SIZE, lr=3e-3, mosaic_p=0.0, seed=0)
    losses = new_trainer(tiny_store, synthetic_samples(8, defect_types=["stain", "hole"]), config).fit()
    assert len(losses) == 12 and all(np.isfinite(losses))
    assert losses[-1] <= 0.7 * losses[0], losses
    assert losses[-1] < losses[1], losses  # still learning after the first epoch, not just recovering from it


def test_resume_repeats_the_uninterrupted_run_exactly(tiny_store: str, tmp_path: Path) -> None:
    samples = synthetic_samples(5)
    config = TrainConfig(epochs=4, image_size=SIZE, mosaic_p=0.5, seed=3)  # mosaics: the RNG state matters
    full = new_trainer(tiny_store, samples, config)
    full_losses = full.fit(tmp_path / "full")

    new_trainer(tiny_store, samples, dataclasses.replace(config, epochs=2)).fit(tmp_path / "split")
    assert torch.load(tmp_path / "split" / CHECKPOINT_NAME, weights_only=True)["epoch"] == 2
    resumed = new_trainer(tiny_store, samples, config)
    assert resumed.fit(tmp_path / "split", resume=True) == full_losses
    full_state, resumed_state = full.mapper.umci.state_dict(), resumed.mapper.umci.state_dict()
    assert all(torch.equal(full_state[k], resumed_state[k]) for k in full_state)

    other = new_trainer(tiny_store, samples, dataclasses.replace(config, lr=5e-4))
    with pytest.raises(ValueError, match="another training setup"):
        other.fit(tmp_path / "split", resume=True)


def test_max_per_category_spreads_over_the_folders(mvtec_root: Path) -> None:
    units = list_inputs(str(mvtec_root), split="test")
    kept = limit_per_category(units, 6)
    washer = [u for u in units if u.category == "washer"]  # color_spot, crack, good ×3, hole, ..., stain
    assert [u for u in kept if u.category == "washer"] == [washer[i] for i in (0, 2, 3, 5, 6, 8)]
    assert len(kept) == 12 and kept == sorted(kept, key=units.index)
    assert limit_per_category(units, 100) == units


def test_listing_takes_the_asked_splits_and_flags_unusable_roots(mvtec_root: Path, visa_sample_dir: Path,
                                                                  tmp_path: Path) -> None:
    both = list_dataset(str(mvtec_root), ["test", "train"])
    assert both.problem is None and len(both.units) == 17 + 4
    assert sum("/train/good/" in u.uri for u in both.units) == 4
    assert all(u.label == 0 for u in both.units if "/good/" in u.uri)
    visa_train = list_dataset(str(visa_sample_dir), ["train"])
    assert [(u.uri.split("/")[-1], u.label) for u in visa_train.units] == [("002.JPG", 0)]
    (tmp_path / "plain").mkdir()
    (tmp_path / "plain" / "a.png").write_bytes(b"whatever")
    assert "not an MVTec-AD or VisA root" in list_dataset(str(tmp_path / "plain"), ["test"]).problem
    assert "no labelled images" in list_dataset(str(tmp_path / "nowhere"), ["test"]).problem


# ----------------------------------------------------------------------------------- the CLI


@dataclass
class Run:
    store: str
    manifest: Manifest
    printed: str


@pytest.fixture(scope="module")
def local_run(tiny_store: str, mvtec_root: Path, visa_sample_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Run:
    """The CLI on two local roots (MVTec-AD layout + VisA layout), published as `tiny-trained`."""
    tmp = tmp_path_factory.mktemp("local-run")
    shutil.copytree(Path(tiny_store) / "tiny", tmp / "store" / "tiny")
    store = str(tmp / "store")
    code, printed = run_cli(cli_args(f"{mvtec_root},{visa_sample_dir}", store, tmp / "work", "--out_profile=tiny-trained"))
    assert code == 0, printed
    return Run(store, ModelStore(store).read_manifest("tiny-trained"), printed)


def test_cli_publishes_a_profile_with_its_provenance(local_run: Run, tiny_store: str, mvtec_root: Path,
                                                     visa_sample_dir: Path) -> None:
    manifest, base = local_run.manifest, ModelStore(tiny_store).read_manifest("tiny")
    training = manifest.provenance["umci_training"]
    # 2 categories × (3 good + 6 or 5 defects) from MVTec, 2 + 2 test images from VisA; no train/good.
    assert training["categories"] == {"candle_synth": {"normal": 2, "anomalous": 2},
                                      "oak_panel": {"normal": 3, "anomalous": 5},
                                      "washer": {"normal": 3, "anomalous": 6}}
    assert training["images"] == 21 and training["skipped_images"] == {}
    assert [d["url"] for d in training["datasets"]] == [str(mvtec_root), str(visa_sample_dir)]
    assert [d["images"] for d in training["datasets"]] == [17, 4]
    assert training["config"] == {**TrainConfig(epochs=3, image_size=SIZE, seed=1, log_every=1).to_dict(),
                                  "betas": [0.5, 0.999]}
    assert len(training["epoch_losses"]) == 3 and training["init"] == "fresh" and training["seed"] == 1
    assert training["checkpoint_sha256"] and training["finished_at"]
    assert manifest.provenance["base_profile"]["name"] == "tiny"
    assert manifest.provenance["base_profile"]["digests"] == base.digests()
    # Same frozen backbones, a new UMCI, CLIP run at the training size.
    assert manifest.files["clip"] == base.files["clip"] and manifest.files["sam"] == base.files["sam"]
    assert manifest.files["umci"].sha256 != base.files["umci"].sha256
    assert manifest.clipsam_config["clip"]["input_size"] == SIZE
    trained, before = umci_state(local_run.store, manifest), umci_state(tiny_store, base)
    assert trained.keys() == before.keys()
    assert any(not torch.equal(trained[k], before[k]) for k in trained)
    assert "images used: 21" in local_run.printed and "images skipped: 0" in local_run.printed
    assert f"{local_run.store}/tiny-trained/manifest.json" in local_run.printed


def test_published_profile_predicts(local_run: Run) -> None:
    from model_store import load_clipsam

    model, manifest = load_clipsam(local_run.store, "tiny-trained", device="cpu")
    sample = generate_image("washer", seed=9, index=0, anomalous=True, size=96)
    prediction = model.predict(sample.image, "washer")
    assert prediction.final_map.shape == (96, 96) and prediction.mask.dtype == bool
    assert 0.0 <= prediction.image_score <= 1.0
    assert manifest.digests()["umci"] == local_run.manifest.files["umci"].sha256


def test_cli_resume_matches_the_uninterrupted_run(local_run: Run, store_copy: str, mvtec_root: Path,
                                                  visa_sample_dir: Path, tmp_path: Path) -> None:
    data, work = f"{mvtec_root},{visa_sample_dir}", tmp_path / "work"
    assert run_cli(cli_args(data, store_copy, work, "--out_profile=tiny-trained", "--epochs=2"))[0] == 0
    code, printed = run_cli(cli_args(data, store_copy, work, "--out_profile=tiny-trained", "--resume"))
    assert code == 0 and "resumed" in printed
    resumed = ModelStore(store_copy).read_manifest("tiny-trained")
    assert resumed.provenance["umci_training"]["epoch_losses"] == local_run.manifest.provenance["umci_training"]["epoch_losses"]
    assert resumed.files["umci"] == local_run.manifest.files["umci"]  # same bytes


def test_cli_refuses_a_checkpoint_of_other_settings(store_copy: str, mvtec_root: Path, tmp_path: Path,
                                                    capsys: pytest.CaptureFixture) -> None:
    work = tmp_path / "work"
    assert run_cli(cli_args(str(mvtec_root), store_copy, work, "--epochs=1", "--categories=washer"))[0] == 0
    capsys.readouterr()
    for extra, message in ((["--resume", "--lr=0.01"], "trained with other settings"),
                           (["--resume", "--categories=washer,oak_panel"], "units"),
                           (["--categories=washer"], "already holds a checkpoint")):
        with pytest.raises(SystemExit) as exit_info:
            main(cli_args(str(mvtec_root), store_copy, work, "--epochs=2", *extra))
        assert exit_info.value.code == 2
        assert message in capsys.readouterr().err


def test_gcs_training_gives_the_local_loss_curve(local_run: Run, gcs_emulator, mvtec_root: Path,
                                                 visa_sample_dir: Path, tiny_store: str, tmp_path: Path) -> None:
    """Data AND model store on gs:// (fake-gcs-server on 127.0.0.1): the same images in the same
    order give exactly the same losses and weights as the local run."""
    data = ",".join([gcs_emulator.upload_tree(mvtec_root, "train/mvtec"),
                     gcs_emulator.upload_tree(visa_sample_dir, "train/visa")])
    store = gcs_emulator.upload_tree(Path(tiny_store), "train/store")
    code, printed = run_cli(cli_args(data, store, tmp_path / "work", "--out_profile=tiny-trained"))
    assert code == 0, printed
    manifest = ModelStore(store).read_manifest("tiny-trained")
    training = manifest.provenance["umci_training"]
    assert training["epoch_losses"] == local_run.manifest.provenance["umci_training"]["epoch_losses"]
    assert [d["url"] for d in training["datasets"]] == data.split(",")
    assert manifest.files == local_run.manifest.files
    assert gcs_emulator.fs.exists(f"{gcs_emulator.bucket}/train/store/tiny-trained/{manifest.files['clip'].name}")


# ------------------------------------------------------------------------------- bad input


def test_bad_images_are_skipped_and_counted(store_copy: str, mvtec_root: Path, tmp_path: Path,
                                            caplog: pytest.LogCaptureFixture) -> None:
    root = tmp_path / "damaged"
    shutil.copytree(mvtec_root, root)
    corrupt = root / "washer" / "test" / "good" / "001.png"
    corrupt.write_bytes(corrupt.read_bytes()[:200])
    missing_mask = root / "oak_panel" / "ground_truth" / "stain" / "000_mask.png"
    missing_mask.unlink()
    (tmp_path / "empty").mkdir()

    code, printed = run_cli(cli_args(f"{root},{tmp_path / 'empty'}", store_copy, tmp_path / "work", "--epochs=1"))
    assert code == 0
    errors = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    assert any(str(missing_mask) in message and "MissingMask" in message for message in errors)
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert any(str(corrupt) in message and "TruncatedImage" in message for message in warnings)
    assert any(str(tmp_path / "empty") in message for message in warnings)
    assert "images used: 15" in printed
    assert "images skipped: 2 (MissingMask 1, TruncatedImage 1)" in printed
    assert "dataset roots skipped: 1" in printed
    training = ModelStore(store_copy).read_manifest("tiny").provenance["umci_training"]
    assert training["images"] == 15 and training["skipped_images"] == {"MissingMask": 1, "TruncatedImage": 1}
    assert training["datasets"][1]["skipped"]


def test_nothing_usable_is_an_error(store_copy: str, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    root = tmp_path / "broken"
    write_synthetic_dataset(str(root), ["washer"], seed=1, size=SIZE, n_train_good=0, n_test_good=2, n_test_defect=1)
    for image in (root / "washer" / "test").rglob("*.png"):
        image.write_bytes(b"not a png")
    assert run_cli(cli_args(str(root), store_copy, tmp_path / "work"))[0] == 1
    assert "no usable training image" in capsys.readouterr().err


@pytest.mark.parametrize("extra, message", [
    (["--epochs=0"], "--epochs must be >= 1"),
    (["--image_size=72"], "multiple of the CLIP patch size 16"),
    (["--mosaic_p=1.5"], "--mosaic_p must be in [0, 1]"),
    (["--lr=0"], "--lr must be > 0"),
    (["--splits=val"], "--splits"),
    (["--init=sideways"], "invalid choice"),
    (["--profile=missing"], "no manifest for profile 'missing'"),
    (["--out_profile=../x"], "--out_profile"),
    (["--categories=gasket"], "--categories: ['gasket'] not found"),
    (["--train_data="], "--train_data is empty"),
])
def test_invalid_flags_exit_2_before_any_work(extra: list[str], message: str, store_copy: str, mvtec_root: Path,
                                               tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(cli_args(str(mvtec_root), store_copy, tmp_path / "work", *extra))
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "work").exists()


def test_missing_required_flag_exits_2(capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["--model_store=/nowhere"])
    assert exit_info.value.code == 2
    assert "--train_data" in capsys.readouterr().err
