"""Activation capture: equality with the HF forward, token layout in the store, backends, resume, errors."""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from _corpus import write_corpus
from _sae_common import store_rows
from safetensors import safe_open

from sae.capture import CaptureConfig, open_source, run_capture
from sae.cli import main as sae_main
from sae.store import ActivationStore, StoreError
from sae.token_types import TokenType
from segcompass.backbones import build_tiny

FAMILIES = ["qwen2_5_vl", "llava"]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    return write_corpus(tmp_path_factory.mktemp("corpus"), n=6)


@pytest.fixture(scope="module", params=FAMILIES)
def backbone(request):
    return build_tiny(request.param)


def reference_states(backbone, corpus: Path):
    """HF forward over the whole corpus as one batch: (prepared, hidden_states[L])."""
    source = open_source(corpus)
    docs = [source[i] for i in range(len(source))]
    prepared = backbone.prepare([d.image for d in docs], [d.text for d in docs])
    with torch.no_grad():
        hidden = backbone.model(**prepared.inputs, output_hidden_states=True).hidden_states[
            backbone.hook_layer
        ]
    return prepared, hidden


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_captured_rows_equal_the_hf_hidden_states_with_their_labels(backbone, corpus, tmp_path, dtype):
    cfg = CaptureConfig(
        data=str(corpus), out=str(tmp_path / "store"), batch_size=6, shard_tokens=100, dtype=dtype
    )
    run_capture(cfg, backbone=backbone)
    store = ActivationStore.open(tmp_path / "store")
    prepared, hidden = reference_states(backbone, corpus)
    keep = prepared.token_types != TokenType.PAD
    rows = store_rows(store)
    expected = hidden[keep].to(getattr(torch, dtype))
    assert torch.equal(rows["activations"], expected)  # bit-exact (after the storage cast)
    assert torch.equal(rows["token_type"].long(), prepared.token_types[keep])
    assert torch.equal(rows["image_rc"].long(), prepared.image_rc[keep])
    assert torch.equal(rows["token_id"].long(), prepared.inputs["input_ids"][keep])
    assert rows["doc_id"].unique().tolist() == list(range(6))
    m = store.manifest
    assert m.metadata.hook_layer == backbone.hook_layer and m.metadata.d_in == backbone.hidden_size
    assert m.num_tokens == int(keep.sum()) and len(m.shards) > 1
    assert m.token_type_counts["image"] == sum(g.num_tokens for g in prepared.geometries)
    docs = store.documents()
    assert [tuple(g["grid"]) for g in docs["geometry"]] == [g.grid for g in prepared.geometries]
    assert docs["source_id"].tolist() == [f"doc{i:04d}" for i in range(6)]


def test_early_stop_and_full_forward_capture_the_same_states(corpus, tmp_path):
    backbone = build_tiny("llava")
    for early in (True, False):
        run_capture(
            CaptureConfig(data=str(corpus), out=str(tmp_path / f"s{early}"), early_stop=early),
            backbone=backbone,
        )
    a, b = (store_rows(ActivationStore.open(tmp_path / f"s{e}"))["activations"] for e in (True, False))
    assert torch.equal(a, b)


def test_transformer_lens_backend_matches_nnsight(backbone, corpus, tmp_path):
    for name in ("nnsight", "transformer_lens"):
        run_capture(
            CaptureConfig(data=str(corpus), out=str(tmp_path / name), backend=name, batch_size=3),
            backbone=backbone,
        )
    a, b = (store_rows(ActivationStore.open(tmp_path / n)) for n in ("nnsight", "transformer_lens"))
    torch.testing.assert_close(a["activations"], b["activations"], atol=1e-5, rtol=1e-5)
    assert torch.equal(a["token_type"], b["token_type"])


def test_generation_capture_states_equal_a_forward_over_prompt_and_response(corpus, tmp_path):
    backbone = build_tiny("qwen2_5_vl")
    n_new = 4
    cfg = CaptureConfig(
        data=str(corpus), out=str(tmp_path / "gen"), batch_size=6, generate_tokens=n_new, max_documents=2
    )
    run_capture(cfg, backbone=backbone)
    rows = store_rows(ActivationStore.open(tmp_path / "gen"))
    source = open_source(corpus)
    for doc in range(2):
        mine = {k: v[rows["doc_id"] == doc] for k, v in rows.items()}
        generated = mine["token_type"] >= TokenType.COT
        assert int(generated.sum()) == n_new  # the tiny model never emits EOS this early
        ids = mine["token_id"].long()[None]
        d = source[doc]
        prepared = backbone.prepare([d.image], [d.text])
        n_prompt = prepared.inputs["input_ids"].shape[1]
        assert torch.equal(ids[0, :n_prompt], prepared.inputs["input_ids"][0])
        inputs = dict(prepared.inputs)
        inputs["input_ids"] = ids
        inputs["attention_mask"] = torch.ones_like(ids)
        if "mm_token_type_ids" in inputs:
            inputs["mm_token_type_ids"] = torch.nn.functional.pad(inputs["mm_token_type_ids"], (0, n_new))
        with torch.no_grad():
            ref = backbone.model(**inputs, output_hidden_states=True).hidden_states[backbone.hook_layer][0]
        torch.testing.assert_close(mine["activations"], ref, atol=1e-4, rtol=1e-4)


def test_label_generated_marks_cot_concentration_and_stops_at_eos():
    from sae.capture import label_generated

    backbone = build_tiny("qwen2_5_vl")
    tok = backbone.tokenizer
    text = "<think> the red one </think> <REF_POS><REF_POS><|im_end|> after"
    ids = torch.tensor([tok(text)["input_ids"]])
    types = label_generated(ids, backbone)[0].tolist()
    pieces = tok.convert_ids_to_tokens(ids[0])
    kinds = {p: TokenType(t).name for p, t in zip(pieces, types, strict=True)}
    assert kinds["<think>"] == "SPECIAL" and kinds["Ġred"] == "COT" and kinds["<REF_POS>"] == "CONCENTRATION"
    assert types[pieces.index("<|im_end|>") :] == [TokenType.PAD] * (len(pieces) - pieces.index("<|im_end|>"))


KILL_SCRIPT = textwrap.dedent(
    """
    import os, signal, sys
    sys.path.insert(0, {tests!r})
    from sae.capture import CaptureConfig, run_capture
    from sae.store.writer import StoreWriter
    from segcompass.backbones import build_tiny

    original, count = StoreWriter.flush, [0]
    def flush_then_die(self):
        original(self)
        count[0] += 1
        if count[0] == {kill_after}:
            os.kill(os.getpid(), signal.SIGKILL)  # a hard kill right after a shard was written
    StoreWriter.flush = flush_then_die
    run_capture(CaptureConfig(data={data!r}, out={out!r}, batch_size=2, shard_tokens=60), backbone=build_tiny("llava"))
    """
)


def test_kill_9_then_resume_gives_the_uninterrupted_store(corpus, tmp_path):
    full = tmp_path / "full"
    backbone = build_tiny("llava")
    run_capture(
        CaptureConfig(data=str(corpus), out=str(full), batch_size=2, shard_tokens=60), backbone=backbone
    )
    killed = tmp_path / "killed"
    script = KILL_SCRIPT.format(
        tests=str(Path(__file__).parent), kill_after=2, data=str(corpus), out=str(killed)
    )
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env={**os.environ})
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    assert not (killed / "manifest.json").exists()
    with pytest.raises(StoreError, match="partial capture; pass resume=True"):
        run_capture(
            CaptureConfig(data=str(corpus), out=str(killed), batch_size=2, shard_tokens=60), backbone=backbone
        )
    run_capture(
        CaptureConfig(data=str(corpus), out=str(killed), batch_size=2, shard_tokens=60, resume=True),
        backbone=backbone,
    )
    a, b = store_rows(ActivationStore.open(full)), store_rows(ActivationStore.open(killed))
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert (
        ActivationStore.open(full).manifest.num_documents
        == ActivationStore.open(killed).manifest.num_documents
        == 6
    )


@pytest.mark.slow
def test_two_process_torchrun_capture_equals_single_process(corpus, tmp_path):
    single = tmp_path / "single"
    run_capture(CaptureConfig(data=str(corpus), out=str(single), batch_size=2, backbone="tiny:llava"))
    multi = tmp_path / "multi"
    torchrun = Path(sys.executable).with_name("torchrun")
    cmd = [
        str(torchrun),
        "--nproc_per_node=2",
        "--master_port=29533",
        "-m",
        "sae.cli",
        "capture",
        "--data",
        str(corpus),
        "--out",
        str(multi),
        "--batch-size",
        "2",
        "--backbone",
        "tiny:llava",
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    store = ActivationStore.open(multi)
    assert {Path(s.file).name[:3] for s in store.manifest.shards} == {"r00", "r01"}
    a, b = store_rows(ActivationStore.open(single)), store_rows(store)
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=1e-5, rtol=1e-5)  # other batch pairings, same states


def test_cli_capture_with_max_tokens(corpus, tmp_path, capsys):
    out = tmp_path / "cli"
    code = sae_main(
        [
            "capture",
            "--data",
            str(corpus),
            "--out",
            str(out),
            "--backbone",
            "tiny:llava",
            "--max-tokens",
            "150",
            "--batch-size",
            "1",
            "--dtype",
            "float16",
        ]
    )
    assert code == 0
    store = ActivationStore.open(out)
    per_doc = store.documents()["num_tokens"]
    assert (
        150 <= store.manifest.num_tokens < 150 + per_doc.max()
    )  # stops at the first document past the budget
    assert store.manifest.metadata.dtype == "float16"
    assert "stored" in capsys.readouterr().out


def test_bad_inputs_are_clear_errors_and_keep_what_was_written(corpus, tmp_path):
    backbone = build_tiny("llava")
    # A layer out of range names the valid range.
    assert (
        sae_main(
            [
                "capture",
                "--data",
                str(corpus),
                "--out",
                str(tmp_path / "x"),
                "--backbone",
                "tiny:llava",
                "--layer",
                "7",
            ]
        )
        == 2
    )
    # An image that will not decode: the error names it; the shards written before it survive.
    bad = tmp_path / "bad"
    write_corpus(bad, n=6)
    (bad / "images" / "0004.png").write_bytes(b"not a png")
    out = tmp_path / "partial"
    with pytest.raises(ValueError, match=r"document 4 \(doc0004\): image .*0004\.png cannot be decoded"):
        run_capture(
            CaptureConfig(data=str(bad), out=str(out), batch_size=2, shard_tokens=10), backbone=backbone
        )
    progress = json.loads((out / "progress" / "r00.json").read_text())
    assert progress["done_documents"] == [0, 1, 2, 3]
    # --skip-bad counts and reports instead.
    res = run_capture(
        CaptureConfig(data=str(bad), out=str(out), batch_size=2, shard_tokens=10, resume=True, skip_bad=True),
        backbone=backbone,
    )
    assert len(res.skipped) == 1 and ActivationStore.open(out).manifest.num_documents == 5
    # A finished store is immutable; another backbone/layer cannot append to a partial one.
    with pytest.raises(StoreError, match="finished store and is immutable"):
        run_capture(CaptureConfig(data=str(corpus), out=str(out), resume=True), backbone=backbone)
    other = tmp_path / "other"
    script = KILL_SCRIPT.format(
        tests=str(Path(__file__).parent), kill_after=1, data=str(corpus), out=str(other)
    )
    subprocess.run([sys.executable, "-c", script], capture_output=True)
    with pytest.raises(StoreError, match="hook_layer: 2 vs 3"):
        run_capture(
            CaptureConfig(data=str(corpus), out=str(other), resume=True),
            backbone=build_tiny("llava", spec=_spec(3)),
        )
    # Empty text.
    empty = tmp_path / "empty"
    write_corpus(empty, n=2)
    lines = (empty / "corpus.jsonl").read_text().splitlines()
    rec = json.loads(lines[1])
    rec["text"] = " "
    (empty / "corpus.jsonl").write_text(lines[0] + "\n" + json.dumps(rec) + "\n")
    with pytest.raises(ValueError, match=r"document 1 \(doc0001\): empty text"):
        run_capture(CaptureConfig(data=str(empty), out=str(tmp_path / "e")), backbone=backbone)


def test_truncated_or_altered_shard_is_detected(corpus, tmp_path):
    out = tmp_path / "s"
    run_capture(CaptureConfig(data=str(corpus), out=str(out), shard_tokens=100), backbone=build_tiny("llava"))
    store = ActivationStore.open(out)
    shard = out / store.manifest.shards[0].file
    with safe_open(str(shard), framework="pt") as f:
        assert set(f.keys()) == {"activations", "doc_id", "position", "token_id", "token_type", "image_rc"}
    shard.write_bytes(shard.read_bytes()[:-100])
    with pytest.raises(StoreError, match="corrupt or truncated"):
        list(ActivationStore.open(out).batches(16))


def _spec(hook_layer: int):
    from segcompass.backbones import TinySpec

    return TinySpec(hook_layer=hook_layer)


def test_resume_under_another_seed_is_refused_and_the_seed_is_part_of_the_store_id(corpus, tmp_path):
    """#23.1: the weights' identity (seed, fingerprint) is saved with the store: a capture begun with seed 0
    is not continued with seed 1, and two seeds give two store ids."""
    bad = write_corpus(tmp_path / "bad", n=6)
    (bad / "images" / "0004.png").write_bytes(b"not a png")
    cfg = CaptureConfig(data=str(bad), out=str(tmp_path / "partial"), backbone="tiny:llava", batch_size=2,
                        shard_tokens=10)  # fmt: skip
    with pytest.raises(ValueError, match="cannot be decoded"):
        run_capture(cfg)  # stops at document 4: documents 0-3 are stored
    with pytest.raises(
        StoreError, match=r"other settings \(weights\.fingerprint: .* weights\.seed: 0 vs 1\)"
    ):
        run_capture(dataclasses.replace(cfg, resume=True, skip_bad=True, seed=1))
    run_capture(dataclasses.replace(cfg, resume=True, skip_bad=True))  # the same seed continues it
    ids = {}
    for seed in (0, 1):
        out = tmp_path / f"seed{seed}"
        run_capture(
            CaptureConfig(data=str(corpus), out=str(out), backbone="tiny:llava", max_documents=1, seed=seed)
        )
        manifest = json.loads((out / "manifest.json").read_text())
        assert manifest["weights"]["seed"] == seed and len(manifest["weights"]["fingerprint"]) == 16
        ids[seed] = manifest["store_id"]
    assert ids[0] != ids[1]


def test_malformed_corpus_line_is_named_and_a_recorded_skip_with_skip_bad(tmp_path, capsys):
    """#23.4: a broken JSONL line is one sentence naming the file and line (no datasets traceback), and a
    counted skip under --skip-bad that the store's manifest lists."""
    data = write_corpus(tmp_path / "data", n=4)
    lines = (data / "corpus.jsonl").read_text().splitlines()
    lines[2] = lines[2][:25]  # cut mid-record: "Unterminated string ..."
    (data / "corpus.jsonl").write_text("\n".join(lines) + "\n")
    argv = ["capture", "--data", str(data), "--out", str(tmp_path / "s"), "--backbone", "tiny:llava"]
    assert sae_main(argv) == 2
    err = capsys.readouterr().err
    assert f"{data / 'corpus.jsonl'} line 3 is not valid JSON" in err and "--skip-bad" in err, err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert not (tmp_path / "s").exists()  # refused before anything was computed or written
    assert sae_main([*argv, "--skip-bad", "true"]) == 0
    manifest = json.loads((tmp_path / "s" / "manifest.json").read_text())
    assert manifest["num_documents"] == 3
    assert [s["doc_id"] for s in manifest["skipped_documents"]] == [2]
    assert "line 3 is not valid JSON" in manifest["skipped_documents"][0]["reason"]
    assert "1 documents skipped" in capsys.readouterr().out
