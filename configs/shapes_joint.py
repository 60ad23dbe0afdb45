"""One generator for all four tasks of the shapes world: text→image, image→text, speech→text and
video→text. Each task keeps its single-task config (configs/shapes_<task>.py: its dataset,
tokenizer, caption vocabulary, diffusion process, sampler and evaluation) under `tasks.<task>`;
its tokenizer trains exactly as that config's does. Then ONE DiT trunk (the blocks and timestep
embedder below) with each task's own input layers, output head and task vector learns every task
at once: each global batch holds a fixed number of rows of every task (`generator.mixture`),
Gaussian diffusion over image latents for text→image, masked diffusion over caption words for the
three X→text tasks, one loss, one step (crossmodal_jax/stages/joint.py, docs/joint.md).

Run (docs/results.md gives its time and scores; metrics.json holds `<task>/<metric>`):
  python -m crossmodal_jax.main --config=configs/shapes_joint.py --workdir=runs/shapes_joint
Sample one task of the joint workdir (the task is inferred from --input, or named by --task):
  python -m crossmodal_jax.sample --workdir=runs/shapes_joint --input=prompts.txt --output=OUT
  python -m crossmodal_jax.sample --workdir=runs/shapes_joint --input=FOLDER_OF_WAVS --output=OUT
Smoke variant for tests (seconds): --config=configs/shapes_joint.py:smoke
"""

import importlib.util
import os

import ml_collections

from crossmodal_jax.config import blocks

# Task -> its single-task config file (beside this one).
TASK_CONFIGS = {
    "text2image": "shapes_t2i.py",
    "image2text": "shapes_i2t.py",
    "speech2text": "shapes_s2t.py",
    "video2text": "shapes_v2t.py",
}

# Variants of those configs as the joint runs of results.md were measured: video→text's frames
# pooled to 16×16 (the single-task default reads whole 32×32 frames since; the joint has not been
# measured so, and its run would take minutes more).
TASK_VARIANTS = {"video2text": "pooled"}


def task_config(file: str, variant: str | None) -> ml_collections.ConfigDict:
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), file)
    spec = importlib.util.spec_from_file_location(file[:-3], path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config(variant)


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    if arg not in (None, "", "smoke"):
        raise ValueError(f"unknown config variant {arg!r}; available: smoke")
    c = ml_collections.ConfigDict()
    c.task = "joint"  # one generator for every task under c.tasks (crossmodal_jax/joint_run.py)
    c.seed = 0  # seeds the joint generator's init, the mixture's order and the diffusion noise
    c.stages = ("tokenizer", "generator")  # a tokenizer per task, then the joint generator
    c.mesh = blocks.mesh()
    c.update(blocks.monitoring())  # peak_tflops (MFU in the logs), profile_steps
    c.tasks = ml_collections.ConfigDict(
        {
            name: task_config(file, ",".join(v for v in (arg, TASK_VARIANTS.get(name)) if v))
            for name, file in TASK_CONFIGS.items()
        }
    )
    if arg == "smoke":  # the suite's FSQ run on the shapes world (the quantizer family)
        c.tasks.text2image = task_config(TASK_CONFIGS["text2image"], "smoke,fsq")
    # Per task: the task whose tokenizer it uses instead of training its own (same modality and
    # input shape), e.g. --config.tokenizer_of.text2image=image2text; "" = its own.
    c.tokenizer_of = ml_collections.ConfigDict({name: "" for name in TASK_CONFIGS})
    # image→text reads scenes with text→image's tokenizer (VQ with the rotation trick, 1,200
    # steps) instead of training its own 1,600-step one: the whole run fits 40 minutes.
    c.tokenizer_of.image2text = "text2image"
    # image→text's condition as the joint runs of results.md were measured with: an MLP of every
    # position's features (256 wide) as the adaLN vector. The single-task config mean-pools since
    # it was measured better over seeds; the joint has not been measured so.
    c.tasks.image2text.generator.model.update(cond_mean_pool=False, cond_pool_hidden=256)
    # Per task: a workdir whose finished tokenizer it uses instead of training one (a single-task
    # workdir, or a joint workdir's task folder, e.g. runs/shapes_joint/text2image; same dataset
    # and tokenizer model, checked in one line); "" = train it here.
    c.tokenizer_from = ml_collections.ConfigDict({name: "" for name in TASK_CONFIGS})

    # The joint generator: the trunk of shapes_t2i's DiT (6 cross-attention blocks of width 128)
    # for every task. Rows of each task per global batch of 128: 48 + 40 + 20 + 20, so that
    # 4,800 steps show each task as many examples as its single-task run (3,600 × 64, 3,000 × 64,
    # 3,000 × 32, 3,000 × 32).
    c.generator = ml_collections.ConfigDict()
    c.generator.model = blocks.joint_trunk(hidden_size=128, depth=6, num_heads=4)
    c.generator.mixture = ml_collections.ConfigDict(
        dict(text2image=48, image2text=40, speech2text=20, video2text=20)
    )
    # Weight of each task's examples in the loss (a weighted mean over the batch's examples).
    # text→image's count twice: the X→text losses fall to ~1e-3 while text→image's stays ~0.2, yet
    # their gradients keep a share of Adam's second moments in the shared trunk. At 1 each its
    # samples were right 93.3 % / 96.7 % of the time (seeds 0 / 1), at 2 96.5 % / 95.1 %: within 2
    # points of its single-task model (96.6 %) on both seeds, at 1 on one (results.md, one model).
    c.generator.loss_weights = ml_collections.ConfigDict({name: 1.0 for name in TASK_CONFIGS})
    c.generator.loss_weights.text2image = 2.0
    c.generator.train = blocks.train(
        steps=4800,
        batch_size=128,
        learning_rate=2e-3,
        warmup_steps=200,
        weight_decay=0.01,
        ema_decay=0.99,
        images_every=1600,
    )
    c.eval = blocks.evaluation()  # at the end; each task evaluates by its own eval block

    if arg == "smoke":
        c.generator.model.update(hidden_size=32, depth=1, num_heads=2)
        c.generator.mixture.update(text2image=4, image2text=4, speech2text=4, video2text=4)
        blocks.smoke_train(c.generator)
    return c
