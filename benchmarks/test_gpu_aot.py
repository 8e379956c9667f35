"""benchmarks.gpu_aot: its clear errors (here, without the CUDA plugin), its reading of XLA's
HLO text and memory-usage report, and, where the plugin is installed, one small deviceless compile."""

from __future__ import annotations

import importlib.util
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from benchmarks import gpu_aot, gpu_what_ifs
from unet_jax.model import cpu_kernels
from unet_jax.model import unet as unet_module

# Two instructions of an optimized GPU module, in XLA's text form: a cuDNN convolution with its
# bias and ReLU, and the backward fusion of a down block's second convolution, which reads the
# skip connection's gradient, the block's output and the pool's gradient (a strided slice inside).
HLO = """HloModule jit_train_step

%fused_reduce_select.2 (param_0: bf16[2,4,4,8], param_1: bf16[2,8,8,8]) -> (bf16[16,8], bf16[2,8,8,8]) {
  %param_1 = bf16[2,8,8,8]{3,2,1,0} parameter(1)
  %slice.1 = bf16[2,4,4,8]{3,2,1,0} slice(%param_1), slice={[0:2:1], [0:8:2], [0:8:2], [0:8:1]}
  %compare.1 = pred[2,8,8,8]{3,2,1,0} compare(%param_1, %param_1), direction=GT
  %select.1 = bf16[2,8,8,8]{3,2,1,0} select(%compare.1, %param_1, %param_1)
  %reduce.1 = bf16[16,8]{1,0} reduce(%select.1, %param_1), dimensions={1}, to_apply=%add
  ROOT %tuple.1 = (bf16[16,8]{1,0}, bf16[2,8,8,8]{3,2,1,0}) tuple(%reduce.1, %select.1)
}

ENTRY %main.1 (images.1: bf16[2,10,10,1]) -> bf16[2,8,8,8] {
  %images.1 = bf16[2,10,10,1]{3,2,1,0} parameter(0)
  %cudnn-conv-bias-activation.7 = (bf16[2,8,8,8]{3,2,1,0}, u8[0]{0}) custom-call(%images.1), custom_call_target="__cudnn$convBiasActivationForward", backend_config={"cudnn_conv_backend_config":{"activation_mode":"kRelu"}}
  %get-tuple-element.7 = bf16[2,8,8,8]{3,2,1,0} get-tuple-element(%cudnn-conv-bias-activation.7), index=0
  %grad.1 = bf16[2,4,4,8]{3,2,1,0} parameter(1)
  %input_reduce_select_fusion.2 = (bf16[16,8]{1,0}, bf16[2,8,8,8]{3,2,1,0}) fusion(%grad.1, %get-tuple-element.7), kind=kInput, calls=%fused_reduce_select.2, metadata={op_name="jit(train_step)/transpose(jvp(UNet))/UNet._network/down1/conv2/reduce_sum"}
  ROOT %loop_add_fusion = bf16[2,8,8,8]{3,2,1,0} fusion(%get-tuple-element.7), kind=kLoop, calls=%fused_add
}
"""  # noqa: E501 (XLA writes an instruction on one line)

REPORT = """Memory Space: default (color=0)
Total bytes: 3072 (3.00KiB)
  cumulative_size;       size;       offset; used_by_n_values; shapes_list
  ------------------------------------------------------------
    2.00KiB( 67%);    2.00KiB;            0;                1; bf16[2,8,8,8]
    3.00KiB(100%);    1.00KiB;         2048;                2; bf16[2,4,4,8], 2×f32[16]
"""


def test_shape_bytes_adds_every_array_of_a_tuple():
    assert gpu_aot.shape_bytes("(bf16[2,4]{1,0}, f32[8]{0}, u8[0]{0})") == 2 * 4 * 2 + 8 * 4
    assert gpu_aot.shape_bytes("f32[]") == 4  # a scalar is one element


def test_hlo_summary_reads_custom_calls_fusions_and_the_reduce_select_fusion():
    summary = gpu_aot.hlo_summary(HLO)
    assert summary["custom_calls"] == {"__cudnn$convBiasActivationForward": 1}
    assert summary["conv_bias_activation_modes"] == {"kRelu": 1}
    assert summary["fusion_kinds"] == {"input_reduce_select_fusion": 1, "loop_add_fusion": 1}
    [fusion] = summary["input_reduce_select_fusions"]
    assert fusion["layer"] == "down1/conv2"
    assert fusion["max_pool_backward"] is True
    assert fusion["bytes_read"] == (2 * 4 * 4 * 8 + 2 * 8 * 8 * 8) * 2
    assert fusion["bytes_written"] == (16 * 8 + 2 * 8 * 8 * 8) * 2
    assert fusion["ops"]["select"] == 1 and fusion["ops"]["reduce"] == 1


def test_usage_summary_reads_the_total_and_the_largest_allocations():
    summary = gpu_aot.usage_summary(REPORT)
    assert summary["total_bytes"] == 3072
    assert [row["values"] for row in summary["largest"]] == [1, 2]
    assert summary["largest"][1]["shapes"] == "bf16[2,4,4,8], 2×f32[16]"


@pytest.mark.parametrize("argv, message", [
    (["--variants", "jax-bf16-nonsense"], "--variants"),
    (["--target", "no/such/target.txtpb"], "--target no/such/target.txtpb"),
])
def test_bad_arguments_exit_2_naming_the_argument(tmp_path, capsys, argv, message):
    assert gpu_aot.main(["--out", str(tmp_path / "out"), *argv]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


HAS_CUDA_PLUGIN = any(importlib.util.find_spec(f"jax_plugins.xla_cuda{v}") for v in (12, 13)) \
    if importlib.util.find_spec("jax_plugins") else False


@pytest.mark.skipif(HAS_CUDA_PLUGIN, reason="the CUDA plugin is installed: the compile test below runs instead")
def test_without_the_cuda_plugin_it_exits_2_saying_what_to_install(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("JAX_SKIP_CUDA_CONSTRAINTS_CHECK", "1")  # gpu_aot sets it for the plugin; not left behind
    assert gpu_aot.main(["--out", str(tmp_path), "--variants", "jax-bf16", "--batch", "1", "--size", "44",
                         "--features", "4", "--depth", "2"]) == 2
    assert 'pip install "jax[cuda' in capsys.readouterr().err


@pytest.mark.slow
@pytest.mark.skipif(not HAS_CUDA_PLUGIN, reason="needs the JAX CUDA plugin (pip install jax[cuda13]); CI has none")
def test_a_small_step_compiles_for_the_h200_without_a_device(tmp_path, monkeypatch):
    monkeypatch.setenv("JAX_SKIP_CUDA_CONSTRAINTS_CHECK", "1")
    assert gpu_aot.main(["--out", str(tmp_path), "--variants", "jax-bf16", "--batch", "1", "--size", "44",
                         "--features", "4", "--depth", "2", "--what-if", "relu-output-barrier", "pool-window-reshape"]) == 0
    rows = json.loads((tmp_path / "gpu_aot.json").read_text())["result"]["rows"]
    assert [row["what_if"] for row in rows] == [None, "relu-output-barrier", "pool-window-reshape"]
    for row in rows:
        assert row["temp_bytes"] > 0 and row["hlo"]["custom_calls"].get("__cudnn$convBackwardFilter", 0) > 0
        assert len(row["hlo"]["pool_backward_kernels"]) >= 2  # two pools at depth 2, wherever XLA fused them


# The pool backward as its own loop fusion beside the bias gradient's reduction (what-if pool-backward-barrier):
# instructions named in the pool's scope mark the kernel, add_any (autodiff's sum of two gradients) does not.
POOL_HLO = """HloModule jit_train_step

%fused_pool (param_0: bf16[2,4,4,8], param_1: bf16[2,8,8,8]) -> bf16[2,8,8,8] {
  %param_0 = bf16[2,4,4,8]{3,2,1,0} parameter(0)
  %param_1 = bf16[2,8,8,8]{3,2,1,0} parameter(1)
  ROOT %pad.1 = bf16[2,8,8,8]{3,2,1,0} pad(%param_0, %param_1), padding=0_0x0_4x0_4x0_0, metadata={op_name="jit(train_step)/transpose(jvp(UNet))/UNet._network/max_pool_2x2/pad"}
}

%fused_reduce (param_0: bf16[2,8,8,8]) -> bf16[16,8] {
  %param_0 = bf16[2,8,8,8]{3,2,1,0} parameter(0)
  %add.1 = bf16[2,8,8,8]{3,2,1,0} add(%param_0, %param_0), metadata={op_name="jit(train_step)/transpose(jvp(UNet))/UNet._network/max_pool_2x2/add_any"}
  ROOT %reduce.1 = bf16[16,8]{1,0} reduce(%add.1, %param_0), dimensions={1}, to_apply=%add
}

ENTRY %main.1 (dy.1: bf16[2,4,4,8], x.1: bf16[2,8,8,8]) -> bf16[16,8] {
  %dy.1 = bf16[2,4,4,8]{3,2,1,0} parameter(0)
  %x.1 = bf16[2,8,8,8]{3,2,1,0} parameter(1)
  %loop_pad_fusion = bf16[2,8,8,8]{3,2,1,0} fusion(%dy.1, %x.1), kind=kLoop, calls=%fused_pool, metadata={op_name="jit(train_step)/transpose(jvp(UNet))/UNet._network/max_pool_2x2/pad"}
  %opt-barrier.1 = bf16[2,8,8,8]{3,2,1,0} bitcast(%loop_pad_fusion)
  ROOT %input_reduce_fusion = bf16[16,8]{1,0} fusion(%opt-barrier.1), kind=kInput, calls=%fused_reduce, metadata={op_name="jit(train_step)/transpose(jvp(UNet))/UNet._network/down1/conv2/reduce_sum"}
}
"""  # noqa: E501


def test_hlo_summary_finds_the_kernels_of_the_pool_backward_and_counts_every_kernels_bytes():
    summary = gpu_aot.hlo_summary(POOL_HLO)
    assert summary["fusions"] == 2
    [pool] = summary["pool_backward_kernels"]
    assert pool["name"] == "loop_pad_fusion" and pool["bias_gradient_reduction"] is False
    assert pool["bytes_read"] == (2 * 4 * 4 * 8 + 2 * 8 * 8 * 8) * 2 and pool["bytes_written"] == 2 * 8 * 8 * 8 * 2
    # the pool's fusion, then the reduction (its operand 1 KiB, its result 16x8); the bitcast is no kernel
    assert summary["kernel_bytes_moved"] == pool["bytes_moved"] + (2 * 8 * 8 * 8 + 16 * 8) * 2


@pytest.mark.parametrize("name", sorted(gpu_what_ifs.POOL_FORMS))
@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_every_pool_form_has_the_pools_values_and_gradients_with_ties(name, dtype):
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.integers(-1, 2, (2, 6, 8, 3)), dtype)  # most windows hold ties
    upstream = jnp.asarray(rng.standard_normal((2, 3, 4, 3)), dtype)

    def gradient(pool):
        return jax.jit(jax.grad(lambda x: (pool(x) * upstream).astype(jnp.float32).sum()))(x)

    form = gpu_what_ifs.POOL_FORMS[name]
    np.testing.assert_array_equal(np.asarray(form(x), np.float32), np.asarray(cpu_kernels.max_pool_2x2(x), np.float32))
    np.testing.assert_array_equal(np.asarray(gradient(form), np.float32),
                                  np.asarray(gradient(cpu_kernels.max_pool_2x2), np.float32))


def test_a_what_if_changes_the_pool_while_it_lasts_only():
    before = unet_module.max_pool_2x2
    with gpu_what_ifs.what_if("pool-reduce-window"):
        assert unet_module.max_pool_2x2 is not before
    assert unet_module.max_pool_2x2 is before
    with pytest.raises(ValueError, match="unknown what-if"), gpu_what_ifs.what_if("pool-nonsense"):
        pass


def test_merge_keeps_the_earlier_rows_this_run_did_not_compile(tmp_path):
    rows = [{"variant": "jax-bf16", "batch": b, "what_if": w, "hlo": {}} for b, w in ((16, None), (1, None), (16, "x"))]
    (tmp_path / "gpu_aot.json").write_text(json.dumps({"command": "earlier", "result": {"rows": rows}}))
    new = [{"variant": "jax-bf16", "batch": 16, "what_if": None, "hlo": {"new": True}}]
    merged = gpu_aot.merged_rows(tmp_path, new)
    assert [(row["batch"], row["what_if"], row["hlo"].get("new")) for row in merged] == [(1, None, None), (16, "x", None),
                                                                                          (16, None, True)]


@pytest.mark.parametrize("name", sorted(set(gpu_what_ifs.POOL_FORMS) - {"pool-reduce-window"}))
def test_the_custom_forms_send_a_nan_windows_gradient_where_the_pool_does(name):
    # reduce_window's select-and-scatter sends it elsewhere (benchmarks/NOTES.md); these keep the custom VJP's choice.
    x = jnp.asarray([[[[1.0], [np.nan]], [[3.0], [0.0]]]], jnp.float32)

    def gradient(pool):
        return np.asarray(jax.grad(lambda x: pool(x).sum())(x))

    np.testing.assert_array_equal(gradient(gpu_what_ifs.POOL_FORMS[name]), gradient(cpu_kernels.max_pool_2x2))
