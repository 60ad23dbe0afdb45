"""What the logs say of the hardware: FLOPs from XLA's cost analysis, the peak table, the
throughput scalars, and the profile window's steps."""

import jax
import jax.numpy as jnp
import pytest

from crossmodal_jax.training import throughput


def test_step_flops_of_a_matmul_is_two_m_n_k():
    compiled = jax.jit(lambda a, b: a @ b).lower(jnp.ones((64, 32)), jnp.ones((32, 16))).compile()
    assert throughput.step_flops(compiled) == 2 * 64 * 32 * 16


def test_step_flops_under_a_mesh_are_one_devices_share():
    """Sharded over the batch, each device's program does 1/n of the matmul's FLOPs."""
    mesh = jax.make_mesh((8,), ("data",))
    rows = jax.NamedSharding(mesh, jax.P("data"))
    f = jax.jit(lambda a, b: a @ b, in_shardings=(rows, None), out_shardings=rows)
    compiled = f.lower(jnp.ones((64, 32)), jnp.ones((32, 16))).compile()
    assert throughput.step_flops(compiled) == 2 * 64 * 32 * 16 / 8


def test_the_device_table_takes_the_longest_name_and_the_config_overrides_it():
    assert throughput.device_peak_tflops("TPU v5 lite") == 197.0  # not v5p's 459
    assert throughput.device_peak_tflops("TPU v5") == 459.0
    assert throughput.device_peak_tflops("NVIDIA H100 80GB HBM3") == 989.0
    assert throughput.device_peak_tflops("cpu") == 0.0
    assert throughput.device_peak_tflops("cpu", configured=2.5) == 2.5
    assert throughput.device_peak_tflops("TPU v4", configured=100.0) == 100.0


def test_throughput_scalars():
    rates = throughput.Throughput(global_batch=64, flops_per_step=4e12, peak_tflops=16.0)
    assert rates.scalars(2.0) == {"examples_per_sec": 128.0, "tflops_per_device": 8.0, "mfu": 0.5}
    assert "mfu" not in throughput.Throughput(64, 4e12, 0.0).scalars(2.0)  # peak unknown
    assert throughput.Throughput(64, 0.0, 16.0).scalars(2.0) == {"examples_per_sec": 128.0}
    line = throughput.describe(rates.scalars(2.0))
    assert line == "128 examples/s, 8 TFLOP/s a device, MFU 50.0 %"


def test_profile_steps_parse():
    assert throughput.parse_profile_steps("") is None
    assert throughput.parse_profile_steps("10,12") == (10, 12)
    assert throughput.parse_profile_steps("7, 7") == (7, 7)
    for bad in ("7", "a,b", "0,3", "5,4", "1,2,3"):
        with pytest.raises(ValueError):
            throughput.parse_profile_steps(bad)
