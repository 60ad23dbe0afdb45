"""Text→image on the embedded `digits`: a VQ-VAE tokenizer, then a text-conditioned DiT over its latents.

Run (the embedded default: ≈7 minutes on 2 CPU cores; see README "Measured results"):
  python -m crossmodal_jax.main --config=configs/vqdit_img.py --workdir=runs/vqdit_img
Smoke variant for tests (seconds):
  python -m crossmodal_jax.main --config=configs/vqdit_img.py:smoke --workdir=/tmp/smoke
Override any field from the command line, e.g. --config.generator.train.steps=100.
"""

import ml_collections


def _train(**kw) -> ml_collections.ConfigDict:
    """Optimisation and bookkeeping of one stage; every field is overridable per stage."""
    c = ml_collections.ConfigDict()
    c.steps = 1000  # optimizer steps of this stage
    c.batch_size = 64  # global batch, split over the mesh's data axes and over processes
    c.learning_rate = 1e-3  # peak learning rate (after warmup)
    c.warmup_steps = 100  # linear warmup from 0 to learning_rate
    c.end_lr_fraction = 0.05  # cosine decay ends at learning_rate * end_lr_fraction
    c.weight_decay = 0.0  # AdamW decoupled weight decay
    c.b1 = 0.9  # Adam beta1
    c.b2 = 0.99  # Adam beta2
    c.grad_clip = 1.0  # clip gradients to this global norm
    c.ema_decay = 0.0  # EMA of the weights used for sampling/eval; 0 keeps a plain copy
    c.log_every = 50  # steps between logged scalars (metrics.jsonl, TensorBoard, progress line)
    c.images_every = (
        500  # steps between image summaries (reconstructions/samples); 0 = only at the end
    )
    c.checkpoint_every = 500  # steps between checkpoints (the last step is always saved)
    c.keep_checkpoints = 3  # how many recent checkpoints to keep
    c.skip_nonfinite = False  # NaN/Inf loss or grads: False stops the run, True skips the update
    c.update(kw)
    return c


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.task = "text2image"  # source→target task (see crossmodal_jax/tasks.py)
    c.seed = 0  # seeds init, data order and the diffusion noise
    c.stages = (
        "tokenizer",
        "generator",
    )  # trained in order; a finished stage is restored, not retrained

    c.data = ml_collections.ConfigDict()
    c.data.name = "digits"  # embedded dataset (see crossmodal_jax/data/sources.py)
    c.data.data_dir = (
        ""  # cache for built datasets; "" = $CROSSMODAL_DATA_DIR or ~/.cache/crossmodal_jax
    )
    c.data.text_max_len = 32  # caption length in UTF-8 byte tokens (incl. end token)
    c.data.worker_count = 0  # grain worker processes (0 = in the main process)

    c.mesh = ml_collections.ConfigDict()
    c.mesh.shape = ml_collections.ConfigDict(
        dict(data=-1, fsdp=1, tensor=1)
    )  # -1: all other devices
    # Logical axis -> mesh axes. See crossmodal_jax/sharding.py for the names and the default table.
    c.mesh.rules = [
        ["batch", ["data", "fsdp"]],
        ["seq", None],
        ["embed", "fsdp"],
        ["mlp", "tensor"],
        ["heads", "tensor"],
        ["head_dim", None],
        ["vocab", None],
        ["conv_in", "fsdp"],
        ["conv_out", "tensor"],
        ["codebook", None],
        ["code_dim", None],
    ]

    # Stage 1: VQ-VAE over 8x8 images -> 4x4 grid of codes.
    c.tokenizer = ml_collections.ConfigDict()
    c.tokenizer.model = ml_collections.ConfigDict()
    c.tokenizer.model.channels = 32  # base conv width
    c.tokenizer.model.channel_mult = (1, 2)  # one entry per resolution: 8x8 -> 4x4
    c.tokenizer.model.num_res_blocks = 1  # residual blocks per resolution
    c.tokenizer.model.code_dim = 8  # dimension of a code vector (the DiT's latent channels)
    c.tokenizer.model.num_codes = 256  # codebook size
    c.tokenizer.model.decay = 0.99  # EMA decay of the codebook statistics
    c.tokenizer.model.epsilon = 1e-5  # Laplace smoothing of EMA cluster sizes
    c.tokenizer.model.commitment_cost = 0.25  # weight of ||z_e - sg(z_q)||^2
    c.tokenizer.model.dead_code_threshold = 0.05  # restart codes whose EMA usage falls below this
    c.tokenizer.model.cosine = False  # l2-normalised inputs and unit-norm codes for the lookup
    c.tokenizer.model.lookup_dim = 0  # >0: look codes up in a learned low dim (0 = in code_dim)
    c.tokenizer.model.codebook_init = "random"  # "random" | "batch" | "kmeans++": first batch
    c.tokenizer.model.lookup_chunk_size = 0  # >0: argmin over codebook chunks (bounds memory)
    c.tokenizer.train = _train(
        steps=2000, batch_size=32, learning_rate=2e-3, warmup_steps=100, images_every=1000
    )

    # Stage 2: DiT over the (quantized) latents, conditioned on the caption bytes.
    c.generator = ml_collections.ConfigDict()
    c.generator.model = ml_collections.ConfigDict()
    c.generator.model.preset = (
        ""  # "S" | "B" | "L" | "XL" (the DiT paper's sizes) overrides the 3 below
    )
    c.generator.model.hidden_size = 64  # transformer width
    c.generator.model.depth = 4  # adaLN-Zero blocks
    c.generator.model.num_heads = 4  # attention heads
    c.generator.model.mlp_ratio = 4.0  # MLP hidden = mlp_ratio * hidden_size
    c.generator.model.patch_size = 1  # patch size over the latent grid
    c.generator.diffusion = ml_collections.ConfigDict()
    c.generator.diffusion.process = "gaussian"  # diffusion over continuous VQ latents
    c.generator.diffusion.schedule = "cosine"  # "linear" | "cosine"
    c.generator.diffusion.timesteps = 1000  # T of the forward process
    c.generator.diffusion.prediction = "v"  # "eps" | "v"
    c.generator.diffusion.cond_drop = 0.1  # probability of dropping the condition (trains CFG)
    c.generator.sample = ml_collections.ConfigDict()
    c.generator.sample.sampler = "ddim"  # "ddim" | "ddpm"
    c.generator.sample.steps = 50  # DDIM steps (DDPM always uses all T)
    c.generator.sample.eta = 0.0  # DDIM eta: 0 = deterministic
    c.generator.sample.guidance = 4.0  # classifier-free guidance scale (1 = conditional only)
    c.generator.sample.snap_to_codebook = True  # quantize sampled latents before decoding
    c.generator.train = _train(
        steps=3000,
        batch_size=32,
        learning_rate=1e-3,
        warmup_steps=200,
        ema_decay=0.999,
        images_every=1000,
    )

    c.eval = ml_collections.ConfigDict()
    c.eval.batch_size = 128  # batch for test-split evaluation
    c.eval.samples_per_prompt = 8  # images per prompt in sample grids and the digit-accuracy check
    # Prompts shown in sample grids; the digit accuracy uses "the digit <word>" for all ten digits.
    c.eval.prompts = ("the digit zero", "the digit three", "a handwritten seven", "the digit nine")

    if arg == "smoke":
        c.tokenizer.model.channels = 16
        c.tokenizer.model.num_codes = 32
        c.generator.model.hidden_size = 32
        c.generator.model.depth = 1
        c.generator.model.num_heads = 2
        c.generator.diffusion.timesteps = 50
        c.generator.sample.steps = 4
        c.eval.samples_per_prompt = 2
        for stage in (c.tokenizer, c.generator):
            stage.train.update(
                steps=6,
                batch_size=16,
                warmup_steps=2,
                log_every=2,
                images_every=0,
                checkpoint_every=3,
            )
    elif arg:
        raise ValueError(f"unknown config variant {arg!r}; available: smoke")
    return c
