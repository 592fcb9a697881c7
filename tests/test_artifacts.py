"""The pipeline's artefacts as cached stages (segcompass/artifacts/): corpus, activation store and SAE are
keyed by their settings, an interrupted capture / SAE training run continues in its stage's work folder and
is published once, and finished folders of the previous layout are still used."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from types import SimpleNamespace

import pytest

import sae.training
from segcompass.artifacts import (
    SAE_STAGE,
    STORE_STAGE,
    SaeConfig,
    StoreConfig,
    activation_store,
    backbone_key,
    trained_sae,
    world_corpus,
)
from segcompass.artifacts import store as store_module
from segcompass.artifacts.legacy import ablation_folders, corpus_folder
from segcompass.stages import StageMissing, partial_folder, stage_folder
from segcompass.world import WorldConfig

BACKBONE = SimpleNamespace(name_or_path="tiny:qwen2_5_vl")


class _Interrupted:
    """A stand-in for `run_capture` / `train_sae`: the first call leaves resumable progress and is
    interrupted; the next finishes. Records (resume, out) of every call."""

    def __init__(self, progress: str, done: str) -> None:
        self.progress, self.done, self.calls = progress, done, []

    def __call__(self, cfg, **_) -> None:
        out = Path(cfg.out)
        self.calls.append((cfg.resume, out))
        if len(self.calls) == 1:
            (out / self.progress).mkdir()
            raise KeyboardInterrupt("interrupted")
        assert (out / self.progress).is_dir()  # what the interrupted call left is still there
        (out / self.done).write_text(json.dumps({"complete": True}))


def test_an_interrupted_capture_and_sae_run_continue_in_their_stage_and_publish_once(tmp_path, monkeypatch):
    corpus = tmp_path / "data" / "corpus-x"
    capture = _Interrupted("progress", "manifest.json")
    monkeypatch.setattr(store_module, "run_capture", capture)
    with pytest.raises(KeyboardInterrupt):
        activation_store(BACKBONE, "tiny:qwen2_5_vl", corpus, tmp_path)
    config = StoreConfig(backbone_key("tiny:qwen2_5_vl", BACKBONE), "corpus-x")
    with pytest.raises(StageMissing, match="continues the interrupted build"):  # never loads half-built
        stage_folder(STORE_STAGE, config, tmp_path)
    store = activation_store(BACKBONE, "tiny:qwen2_5_vl", corpus, tmp_path)
    work = partial_folder(store)
    assert store == STORE_STAGE.path(config, tmp_path) and store.parent == tmp_path / "activations"
    assert capture.calls == [(False, work), (True, work)]  # the second call resumed the same folder
    assert (
        activation_store(BACKBONE, "tiny:qwen2_5_vl", corpus, tmp_path) == store and len(capture.calls) == 2
    )
    assert sorted(p.name for p in store.parent.iterdir()) == [store.name]

    training = _Interrupted("checkpoints", "segcompass_sae.json")
    monkeypatch.setattr(sae.training, "train_sae", training)
    with pytest.raises(KeyboardInterrupt):
        trained_sae(store, tmp_path)
    folder = trained_sae(store, tmp_path)
    assert folder == SAE_STAGE.path(SaeConfig(store=store.name), tmp_path)
    assert training.calls == [(False, partial_folder(folder)), (True, partial_folder(folder))]
    assert trained_sae(store, tmp_path) == folder and len(training.calls) == 2
    # every setting is in the key: another recipe is another SAE
    assert SAE_STAGE.key(SaeConfig(store=store.name, k=8.0)) != folder.name


def test_a_store_key_follows_the_corpus_the_prompt_and_the_backbone():
    base = StoreConfig("tiny:qwen2_5_vl@tiny:qwen2_5_vl", "corpus-a")
    keys = {
        STORE_STAGE.key(c)
        for c in (
            base,
            StoreConfig(base.backbone, "corpus-b"),
            StoreConfig(base.backbone, base.corpus, text_column="instruction"),
            StoreConfig(base.backbone, base.corpus, image_first=False),
            StoreConfig("warm:qwen2_5_vl@/cache/x", base.corpus),
        )
    }
    assert len(keys) == 5


def test_the_corpus_is_written_once_as_a_stage(tmp_path):
    world = WorldConfig(seed=0)
    first = world_corpus(tmp_path, world, "val", 2)
    stamp = (first / "corpus.jsonl").stat().st_mtime_ns
    assert first.parent == tmp_path / "data" and (first / "stage.json").is_file()
    assert len((first / "corpus.jsonl").read_text().splitlines()) == 2
    assert (
        world_corpus(tmp_path, world, "val", 2) == first
        and (first / "corpus.jsonl").stat().st_mtime_ns == stamp
    )
    assert world_corpus(tmp_path, world, "val", 3) != first


def test_finished_folders_of_the_previous_layout_are_used_and_unfinished_ones_are_not(
    tmp_path, monkeypatch, caplog
):
    def never(*args, **kwargs):
        raise AssertionError("a finished folder of the previous layout was built again")

    monkeypatch.setattr(store_module, "run_capture", never)
    monkeypatch.setattr(sae.training, "train_sae", never)
    world = WorldConfig(seed=0)
    corpus = corpus_folder(tmp_path, world, "train", 400)
    corpus.mkdir(parents=True)
    (corpus / "corpus.jsonl").write_text("{}\n")
    old = ablation_folders(tmp_path, world, "tiny:qwen2_5_vl", backbone_key("tiny:qwen2_5_vl", BACKBONE), 400)
    for folder, marker in ((old["store"], "manifest.json"), (old["sae"], "segcompass_sae.json")):
        folder.mkdir(parents=True)
        (folder / marker).write_text("{}")
    assert world_corpus(tmp_path, world, "train", 400) == corpus
    store = activation_store(BACKBONE, "tiny:qwen2_5_vl", corpus, tmp_path, legacy=old["store"])
    assert store == old["store"] and trained_sae(store, tmp_path, legacy=old["sae"]) == old["sae"]

    # an unfinished one (an old interrupted capture) is not continued: the stage is built anew
    (old["store"] / "manifest.json").unlink()

    def finish(cfg, **_) -> None:
        (Path(cfg.out) / "manifest.json").write_text("{}")

    monkeypatch.setattr(store_module, "run_capture", finish)
    with caplog.at_level(logging.WARNING, logger="segcompass.artifacts.keys"):
        store = activation_store(BACKBONE, "tiny:qwen2_5_vl", corpus, tmp_path, legacy=old["store"])
    assert store != old["store"] and (store / "manifest.json").is_file()
    assert "unfinished folder of the previous layout" in caplog.text


def test_the_previous_layout_names_are_the_ones_it_wrote():
    # folder names a default `./dev.sh run` (seed 0, 400 / 150 documents) wrote before the artefacts were stages
    from segcompass.artifacts.legacy import pipeline_folders

    world = WorldConfig(seed=0)
    assert corpus_folder(Path("runs"), world, "train", 400).name == "corpus-train-272f220bd3"
    assert corpus_folder(Path("runs"), world, "val", 150).name == "corpus-val-e657869700"
    old = pipeline_folders(
        Path("runs"), world, "tiny:qwen2_5_vl", backbone_key("tiny:qwen2_5_vl", BACKBONE), seed=0,
        sae_documents=400, analysis_documents=150, instruction_first=True,
        sae_recipe=("tiny", "batchtopk", 16.0, 20.0, 50),
    )  # fmt: skip
    assert {k: v.name for k, v in old.items()} == {
        "train_store": "tiny-qwen2_5_vl-sae-train-f585d2ec40",
        "sae": "tiny-qwen2_5_vl-28edffa704",
        "analysis_store": "tiny-qwen2_5_vl-analysis-83b75f5e62",
    }
