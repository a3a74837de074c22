"""``pretrain.compile``: the step through ``torch.compile`` gives the eager loss, and a machine that cannot build
kernels is refused before training with the fix named."""

import pytest
import torch
import torch._dynamo
import torch._inductor.config as inductor
from omegaconf import OmegaConf

from maskpolicy.meta.config import ConfigError
from maskpolicy.meta.training import check_compile, compiled
from maskpolicy.policies import RandomPolicy
from maskpolicy.tasks.text.encoding import encode_documents, pad_rows, token_batch
from maskpolicy.tasks.training.pretraining import EncoderCorruption, MaskedPretraining, corrupted_loss


def run_config(**pretrain):
    return OmegaConf.create({"pretrain": pretrain, "trainer": {"accelerator": "cpu", "devices": 1}})


def test_compile_is_off_unless_asked_and_then_checked_on_the_trainers_device():
    assert not compiled(OmegaConf.create({})) and not compiled(run_config())
    check_compile(run_config(compile=False))  # nothing to check: returns at once
    assert compiled(run_config(compile=True))


@pytest.mark.slow
def test_a_machine_without_a_cpp_compiler_is_refused_with_the_fix():
    torch._dynamo.reset()  # nothing compiled before this test may be reused
    with inductor.patch({"fx_graph_cache": False, "cpp.cxx": (None, "/nonexistent/g++")}), \
            pytest.raises(ConfigError, match=r"cannot build kernels for cpu .*nonexistent.*pretrain.compile=false"):
        check_compile(run_config(compile=True))
    torch._dynamo.reset()


@pytest.mark.slow
def test_the_compiled_step_gives_the_eager_loss_and_gradients(tiny_task, tiny_tokenizer, tiny_bert_spec):
    check_compile(run_config(compile=True))  # this machine has g++
    corpus = tiny_task.corpus()
    batch = pad_rows(encode_documents([d.text for d in corpus], [d.entities for d in corpus], tiny_tokenizer, 64),
                     tiny_tokenizer.pad_token_id)
    mask = RandomPolicy(0.3).select(token_batch(batch), torch.Generator().manual_seed(0))
    inputs = EncoderCorruption(tiny_tokenizer)(batch, mask, torch.Generator().manual_seed(1))
    torch.manual_seed(0)
    model = tiny_bert_spec.build_model(tiny_tokenizer).eval()  # eval: the compiled step draws its own dropout
    module = MaskedPretraining(model, RandomPolicy(0.3), EncoderCorruption(tiny_tokenizer), compile=True)
    assert module.loss_of is not corrupted_loss
    losses, gradients = [], []
    for loss_of in (corrupted_loss, module.loss_of):
        model.zero_grad()
        loss = loss_of(model, inputs)
        loss.backward()
        losses.append(float(loss.detach()))
        gradients.append(torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None]))
    assert losses[1] == pytest.approx(losses[0], rel=1e-5)
    torch.testing.assert_close(gradients[1], gradients[0], rtol=1e-4, atol=1e-6)
    assert not any(key.startswith("_orig_mod") for key in model.state_dict())  # the weights keep their own names
