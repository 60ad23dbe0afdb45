"""FSQ and LFQ tokenizers through `main`: trained, evaluated and sampled by a generator over their
codes (residual VQ: test_tasks_cli.py's masked run, and test_resume.py)."""

import pytest
from cli_helpers import check_quantizer_run

# (quantizer variant, process): with residual VQ under the masked process, each quantizer once
# and each process once.
RUNS = ["fsq,flow", "lfq"]


@pytest.mark.parametrize("variant", RUNS)
def test_a_quantizer_variant_trains_evaluates_and_samples(smoke_workdir, variant):
    workdir, _, _ = smoke_workdir(f"configs/vqdit_img.py:smoke,{variant}")
    check_quantizer_run(workdir, variant.split(",")[0])
