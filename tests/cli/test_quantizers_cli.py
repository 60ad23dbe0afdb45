"""The LFQ tokenizer through `main`: trained, evaluated and sampled by a flow generator over its
codes. With FSQ on the shapes world (the text→image tokenizer of test_joint_cli.py's joint smoke,
Gaussian) and residual VQ (test_tasks_cli.py's masked run, and test_resume.py), each quantizer
runs once through main, under each of the three processes once."""

import pytest
from cli_helpers import check_quantizer_run

RUNS = ["lfq,flow"]  # (quantizer variant, process)


@pytest.mark.parametrize("variant", RUNS)
def test_a_quantizer_variant_trains_evaluates_and_samples(smoke_workdir, variant):
    workdir, _, _ = smoke_workdir(f"configs/vqdit_img.py:smoke,{variant}")
    check_quantizer_run(workdir, variant.split(",")[0])
