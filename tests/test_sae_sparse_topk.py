"""The sparse TopK training pass equals sae-lens's dense TopK: loss, output, codes and every gradient."""

from __future__ import annotations

import pytest
import torch
from _sae_common import make_store, sparse_dictionary
from sae_lens import TopKTrainingSAE, TopKTrainingSAEConfig
from sae_lens.saes.sae import TrainStepInput
from safetensors.torch import load_file

from sae.training import SparseTopKTrainingSAE, SparseTopKTrainingSAEConfig, TrainConfig, train_sae


@pytest.mark.parametrize("rescale", [True, False])
@pytest.mark.parametrize("b_dec_in", [True, False])
@pytest.mark.parametrize("dead_fraction", [0.0, 0.5])
def test_sparse_topk_step_equals_dense(rescale, b_dec_in, dead_fraction):
    torch.manual_seed(0)
    kw = {
        "d_in": 16,
        "d_sae": 96,
        "k": 6,
        "rescale_acts_by_decoder_norm": rescale,
        "apply_b_dec_to_input": b_dec_in,
    }
    dense = TopKTrainingSAE(TopKTrainingSAEConfig(**kw))
    # a tiny chunk bound forces several row chunks in the forward and in the encoder backward
    sparse = SparseTopKTrainingSAE(SparseTopKTrainingSAEConfig(**kw, sparse_chunk_elements=500))
    with torch.no_grad():
        for p in dense.parameters():
            p.add_(0.1 * torch.randn_like(p))
    sparse.load_state_dict(dense.state_dict())
    x = torch.randn(45, 16)
    dead = torch.rand(96) < dead_fraction
    outs = []
    for sae in (dense, sparse):
        step = TrainStepInput(
            sae_in=x, coefficients={}, dead_neuron_mask=dead, n_training_steps=0, is_logging_step=False
        )
        out = sae.training_forward_pass(step)
        out.loss.backward()
        outs.append(out)
    d, s = outs
    torch.testing.assert_close(s.loss, d.loss, rtol=1e-5, atol=1e-6)
    for key in d.losses:
        torch.testing.assert_close(s.losses[key], d.losses[key], rtol=1e-5, atol=1e-6)
    if dead_fraction:
        assert d.losses["auxiliary_reconstruction_loss"] > 0
    torch.testing.assert_close(s.sae_out, d.sae_out, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(s.feature_acts.to_dense(), d.feature_acts, rtol=1e-5, atol=1e-6)
    grads = dict(sparse.named_parameters())
    for name, p in dense.named_parameters():
        torch.testing.assert_close(grads[name].grad, p.grad, rtol=1e-4, atol=1e-6, msg=name)


def test_sparse_and_dense_topk_train_the_same_sae(tmp_path):
    x, _ = sparse_dictionary(4096, seed=4)
    store = make_store(tmp_path / "acts", x)
    common = {"architecture": "topk", "k": 4, "d_sae": 96, "batch_size": 128, "lr": 1e-3, "epochs": 1}
    common |= {"progress": False, "val_max_tokens": 0, "dead_feature_window": 5}
    weights = []
    for sparse in (True, False):
        out = tmp_path / f"sparse-{sparse}"
        train_sae(TrainConfig(store=str(store.root), out=str(out), sparse_topk=sparse, **common))
        weights.append(load_file(out / "sae_weights.safetensors"))
    for name in weights[0]:
        torch.testing.assert_close(weights[0][name], weights[1][name], rtol=1e-3, atol=1e-5, msg=name)


@pytest.mark.parametrize("architecture", ["standard", "topk", "jumprelu"])
def test_input_grad_fix_changes_no_value(architecture):
    """Leaving the zero b_dec input term out of the graph (apply_b_dec_to_input=False) gives the same
    loss and gradients as sae-lens's class, and the input no longer needs a gradient."""
    from sae_lens.registry import get_sae_training_class

    from sae.training.fast import without_wasted_input_grad

    cls, cfg_cls = get_sae_training_class(architecture)
    extra = {"k": 5} if architecture == "topk" else {}
    torch.manual_seed(0)
    plain = cls(cfg_cls(d_in=12, d_sae=40, apply_b_dec_to_input=False, **extra))
    fixed = without_wasted_input_grad(cls)(cfg_cls(d_in=12, d_sae=40, apply_b_dec_to_input=False, **extra))
    assert type(fixed).__name__ == cls.__name__ and isinstance(fixed, cls)
    fixed.load_state_dict(plain.state_dict())
    x = torch.randn(30, 12)
    assert plain.process_sae_in(x).requires_grad and not fixed.process_sae_in(x).requires_grad
    coeffs = {
        name: float(c[0] if isinstance(c, tuple) else c) for name, c in plain.get_coefficients().items()
    }
    for sae in (plain, fixed):
        step = TrainStepInput(
            sae_in=x, coefficients=coeffs, dead_neuron_mask=None, n_training_steps=0, is_logging_step=False
        )
        sae._out = sae.training_forward_pass(step)
        sae._out.loss.backward()
    assert torch.equal(plain._out.loss, fixed._out.loss)
    grads = dict(fixed.named_parameters())
    for name, p in plain.named_parameters():
        torch.testing.assert_close(grads[name].grad, p.grad, rtol=1e-6, atol=1e-7, msg=name)
