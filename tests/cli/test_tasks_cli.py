"""Every X→text config (and masked text→image) end to end: main on its smoke variant, then the
sample CLI on a folder of inputs of another size / sample rate / frame count than training."""

import json
import os

import numpy as np
import pytest
from cli_helpers import check_quantizer_run, read_jsonl, run_cli
from PIL import Image

# configs/video2txt.py is not trained here: tests/cli/test_shapes_cli.py runs the same task (the
# video2text generator, .gif and .npy clips of another size through the sample CLI) on
# configs/shapes_v2t.py, and its smoke run cost ~90 s of a suite that must stay within 15 min.
# Nor is configs/speech2txt.py: configs/shapes_s2t.py (test_shapes_cli.py) and
# configs/librispeech_s2t.py (test_librispeech_cli.py: training, resume, WER, a resampled .wav
# and a broken one through the sample CLI) run speech→text. Both configs are still built and
# validated by tests/config and tests/test_experiment.py.
TEXT_CONFIGS = {
    "img2txt": "configs/img2txt.py:smoke",
}


@pytest.fixture(params=sorted(TEXT_CONFIGS))
def text_run(request, smoke_workdir):
    workdir, _, _ = smoke_workdir(TEXT_CONFIGS[request.param])
    return request.param, workdir


def test_text_task_trains_both_stages_and_scores_captions(text_run):
    name, workdir = text_run
    metrics = json.load(open(os.path.join(workdir, "metrics.json")))
    for key in ("test_bleu", "test_rougeL", "test_wer", "test_cer", "test_exact_match"):
        assert key in metrics and np.isfinite(metrics[key]), key
    assert "test_psnr_db" in metrics and "test_codebook_usage" in metrics
    assert "test_digit_accuracy" in metrics
    rows = read_jsonl(os.path.join(workdir, "test_captions.jsonl"))
    assert len(rows) == 32
    assert all(isinstance(r["text"], str) and r["reference"] for r in rows)
    generator_rows = read_jsonl(os.path.join(workdir, "generator", "metrics.jsonl"))
    assert [r["step"] for r in generator_rows] == [2, 4, 6]
    assert all("masked_accuracy" in r and np.isfinite(r["loss"]) for r in generator_rows)
    assert os.path.isfile(os.path.join(workdir, "tokenizer", "reconstructions_000006.png"))
    assert os.listdir(os.path.join(workdir, "eval", "tb"))


def _write_inputs(kind: str, folder: str, data_dir: str) -> list[str]:
    """Three images deliberately not in the training format: 24x24 RGB instead of 8x8 gray."""
    from crossmodal_jax import data

    assert kind == "img2txt"
    os.makedirs(folder)
    names = []
    test = data.load_arrays("digits", "test", data_dir)
    for i in range(3):
        img = (test["image"][i, :, :, 0] * (255 // 16)).astype(np.uint8)
        rgb = np.stack([np.kron(img, np.ones((3, 3), np.uint8))] * 3, axis=-1)
        names.append(f"img_{2 - i}.png")
        Image.fromarray(rgb).save(os.path.join(folder, names[-1]))
    open(os.path.join(folder, "notes.txt"), "w").write("not an input")  # ignored: wrong suffix
    return sorted(names)


def test_sample_cli_captions_a_folder_in_file_name_order(text_run, tmp_path, data_dir):
    name, workdir = text_run
    names = _write_inputs(name, str(tmp_path / "in"), data_dir)
    out = tmp_path / "out"
    result = run_cli(
        "sample", f"--workdir={workdir}", f"--input={tmp_path / 'in'}", f"--output={out}"
    )
    assert result.returncode == 0, result.stderr[-3000:]
    rows = read_jsonl(out / "outputs.jsonl")
    assert [r["input"] for r in rows] == names
    assert all(isinstance(r["text"], str) for r in rows)


def test_sample_cli_names_a_broken_input_file(text_run, tmp_path):
    name, workdir = text_run
    suffix = {"img2txt": ".png"}[name]
    folder = tmp_path / "in"
    folder.mkdir()
    (folder / f"broken{suffix}").write_bytes(b"not really a media file")
    out = tmp_path / "out"
    result = run_cli("sample", f"--workdir={workdir}", f"--input={folder}", f"--output={out}")
    assert result.returncode != 0
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert f"broken{suffix}" in result.stderr
    assert not out.exists()


def test_masked_text_to_image_over_residual_vq_ids_runs_and_samples(smoke_workdir, tmp_path):
    # Residual VQ's two ids a latent position: the masked process generates 32 ids for a 4x4
    # grid, and the tokenizer decodes their summed codes (FSQ and LFQ: test_quantizers_cli.py).
    workdir, _, _ = smoke_workdir("configs/vqdit_img.py:smoke,rvq,masked")
    check_quantizer_run(workdir, "rvq")
    rows = read_jsonl(os.path.join(workdir, "generator", "metrics.jsonl"))
    assert all("masked_accuracy" in r for r in rows)
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("the digit one\nthe digit two\n")
    out = tmp_path / "out"
    result = run_cli("sample", f"--workdir={workdir}", f"--input={prompts}", f"--output={out}")
    assert result.returncode == 0, result.stderr[-3000:]
    assert sorted(os.listdir(out)) == ["000000.png", "000001.png"]
    assert np.asarray(Image.open(out / "000000.png")).shape == (8, 8)


def test_a_prompt_word_outside_the_vocabulary_is_one_line():
    from crossmodal_jax.data.text import TextTokenizer
    from crossmodal_jax.errors import UserError
    from crossmodal_jax.sample import check_prompts

    words = TextTokenizer(("a", "red", "circle"))
    check_prompts(words, ["a red circle"])
    with pytest.raises(
        UserError, match=r"^prompt line 2 \('a red cirle'\): the word 'cirle' is not"
    ):
        check_prompts(words, ["a red circle", "a red cirle"])
    check_prompts(TextTokenizer(), ["any text at all"])  # bytes: every prompt is readable
