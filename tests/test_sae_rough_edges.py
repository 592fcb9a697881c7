"""SAE rough edges: `write_store` linear in rows with the writer's shard size, the explained-variance
collapse warning, and finished runs that drop their resume checkpoints unless asked to keep them."""

from __future__ import annotations

import inspect
import logging
from types import SimpleNamespace

import pytest
import torch
from _sae_common import make_store, sparse_dictionary

from sae.cli import main as sae_cli
from sae.store import StoreWriter, write_store
from sae.training import TrainConfig, train_sae
from sae.training.checkpoint import CHECKPOINT_DIR, list_checkpoints
from sae.training.monitor import EV_PATIENCE, Monitor

# ----------------------------------------------------------------------------------------- write_store


def test_write_store_shards_like_the_writer(tmp_path):
    assert inspect.signature(StoreWriter).parameters["shard_tokens"].default == 65536
    store = write_store(tmp_path / "s", torch.zeros(66_000, 2))
    assert [s.num_tokens for s in store.manifest.shards] == [65_536, 464]  # 1024 documents of 64, then 7.25


class _RowCounter(torch.Tensor):
    """doc_ids that count the elements every torch operation on them reads (results are plain tensors)."""

    rows_read = 0

    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        with torch._C.DisableTorchFunctionSubclass():
            cls.rows_read += sum(a.numel() for a in (*args, *kwargs.values()) if isinstance(a, _RowCounter))
            return func(*args, **kwargs)


def _rows_read(tmp_path, n: int, shuffle: bool) -> int:
    doc_ids = torch.arange(n) // 16
    if shuffle:
        doc_ids = doc_ids[torch.randperm(n, generator=torch.Generator().manual_seed(0))]
    _RowCounter.rows_read = 0
    write_store(tmp_path / f"s{n}{shuffle}", torch.zeros(n, 2), doc_ids=doc_ids.as_subclass(_RowCounter))
    return _RowCounter.rows_read


@pytest.mark.parametrize("shuffle", [False, True])
def test_write_store_reads_each_document_id_a_bounded_number_of_times(tmp_path, shuffle):
    """Grouping rows into documents is linear: 10x the rows reads the id column ~10x as often (a scan of
    every row per document would read it ~100x as often)."""
    small, large = _rows_read(tmp_path, 2048, shuffle), _rows_read(tmp_path, 20_480, shuffle)
    assert large <= 12 * small, (small, large)
    assert small <= 16 * 2048


def test_write_store_groups_documents_like_before(tmp_path):
    x = torch.arange(12, dtype=torch.float32).repeat(3, 1).T  # row i = [i, i, i]
    doc_ids = torch.tensor([5, 2, 5, 2, 9, 9, 2, 5, 9, 2, 5, 9])
    store = write_store(tmp_path / "s", x, doc_ids=doc_ids, shard_tokens=4)
    docs = store.documents()
    assert docs["doc_id"].tolist() == [2, 5, 9] and docs["num_tokens"].tolist() == [4, 4, 4]
    rows = torch.cat([store.load_shard(s)["activations"][:, 0] for s in store.manifest.shards])
    assert rows.tolist() == [1, 3, 6, 9, 0, 2, 7, 10, 4, 5, 8, 11]  # by document, each in its row order
    with pytest.raises(ValueError, match="one entry per row"):
        write_store(tmp_path / "bad", x, doc_ids=doc_ids[:5])


# ----------------------------------------------------------------------------------------- monitor


def _out(ev: float, l0: int, n: int = 64, d: int = 8) -> SimpleNamespace:
    """A training step's output whose batch has explained variance `ev` and L0 `l0`."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, d, generator=g)
    centred = x - x.mean(0)
    # x_hat = mean + sqrt(1 - ev)·(a residual of the centred data's norm), orthogonal-ish noise scaled exactly
    noise = torch.randn(n, d, generator=g)
    noise = noise * (centred.pow(2).sum() / noise.pow(2).sum()).sqrt() * (1 - ev) ** 0.5
    acts = torch.zeros(n, 32)
    acts[:, :l0] = 1.0
    return SimpleNamespace(feature_acts=acts, sae_in=x, sae_out=x - noise, loss=torch.tensor(1.0))


def _run_monitor(
    evs: list[float], *, architecture: str = "standard", l0: int = 20, total_steps: int = 100, first: int = 0
):
    """Warnings of a monitor fed batches with these explained variances at steps `first`, `first + 1`, …
    (default: the last steps of the run); warm-up 3 steps, every step logged."""
    cfg = TrainConfig(architecture=architecture, batch_size=10, log_every=1, progress=False)
    monitor = Monitor(cfg, total=total_steps * 10, start=0, warm_up_steps=3, is_main=True)
    trainer = SimpleNamespace(n_training_steps=0)
    first = first or total_steps - len(evs) + 1
    for i, ev in enumerate(evs):
        trainer.n_training_steps = first + i
        monitor.after_step(trainer, _out(ev, l0), 0, 10, last=trainer.n_training_steps == total_steps)
    monitor.close()
    return monitor.warnings


def test_fixture_batches_have_the_explained_variance_asked_for():
    from sae.training.monitor import step_metrics

    for ev in (-0.5, 0.0, 0.5, 0.9):
        assert step_metrics(_out(ev, 3)).explained_variance == pytest.approx(ev, abs=0.15)


def test_explained_variance_collapse_warns_while_l0_is_still_healthy(caplog):
    with caplog.at_level(logging.WARNING, logger="sae.training.monitor"):
        warnings = _run_monitor([0.8] * 5 + [-0.2] * 10, first=11)
    assert len(warnings) == 1 and "explained variance" in warnings[0] and "L0 20.0" in warnings[0]
    assert f"on {EV_PATIENCE} logged batch(es) in a row" in warnings[0]
    assert any("explained variance" in r.getMessage() for r in caplog.records)


def test_a_run_that_ends_with_no_explained_variance_warns_at_its_last_batch():
    """The 1M-token run that ended at explained variance -0.008 must not finish silently."""
    warnings = _run_monitor([0.5, 0.4, -0.008])
    assert len(warnings) == 1 and "-0.008" in warnings[0]


def test_healthy_noisy_or_early_runs_do_not_warn():
    assert _run_monitor([0.9, 0.02, 0.9, 0.03, 0.9, 0.9]) == []  # single low batches are noise
    assert _run_monitor([0.0] * 9 + [0.8], first=1) == []  # low only in the first 10 % of the run
    assert _run_monitor([0.01] * 5, l0=20, architecture="topk")[0].count("--k") == 1  # topk is watched too


def test_l0_collapse_and_ev_collapse_are_each_warned_once():
    warnings = _run_monitor([-0.1] * 10, l0=0)
    assert len(warnings) == 2 and "L0 collapsed" in warnings[0] and "explained variance" in warnings[1]


# ----------------------------------------------------------------------------------------- checkpoints

RUN = {"d_sae": 64, "l1_coefficient": 1.0, "lr": 3e-3, "batch_size": 256, "epochs": 2, "progress": False,
       "checkpoint_every_tokens": 256 * 5, "num_threads": 1, "val_max_tokens": 0}  # fmt: skip


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    x, _ = sparse_dictionary(8192, seed=11)
    return make_store(tmp_path_factory.mktemp("store") / "acts", x)


def test_finished_run_removes_its_resume_checkpoints(store, tmp_path, caplog):
    with caplog.at_level(logging.INFO, logger="sae.training"):
        result = train_sae(TrainConfig(store=str(store.root), out=str(tmp_path / "run"), **RUN))
    assert (result.out / "sae_weights.safetensors").exists() and (result.out / "segcompass_sae.json").exists()
    assert not (result.out / CHECKPOINT_DIR).exists()
    assert any("removed 2 resume checkpoint" in r.getMessage() for r in caplog.records)


def test_keep_final_checkpoints_keeps_the_newest(store, tmp_path):
    out = tmp_path / "kept"
    train_sae(TrainConfig(store=str(store.root), out=str(out), keep_final_checkpoints=True, **RUN))
    kept = list_checkpoints(out)
    assert len(kept) == 2 and kept[-1].tokens > kept[0].tokens


def test_cli_documents_and_parses_the_new_fields(capsys):
    with pytest.raises(SystemExit):
        sae_cli(["train", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "--keep-final-checkpoints" in text and "several GB" in text
    assert "--ev-collapse-threshold" in text and "explained variance" in text
    cfg = TrainConfig(keep_final_checkpoints=True, ev_collapse_threshold=0.1).resolved()
    assert "keep_final_checkpoints" not in cfg.result_fields()  # does not change what is trained
    assert "ev_collapse_threshold" not in cfg.result_fields()
