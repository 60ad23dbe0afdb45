"""Config blocks of the models: the tokenizer (VQ-VAE and quantizers, adversarial term), the
generator (DiT, diffusion process, sampler) and the stage blocks that compose them with a
`train` block. Re-exported by `blocks`, the namespace config files use.
"""

from __future__ import annotations

import ml_collections

from crossmodal_jax.config.run_blocks import smoke_train, train


def tokenizer_model(**overrides) -> ml_collections.ConfigDict:
    """VQ-VAE of the task's continuous modality (models/vqvae.py)."""
    c = ml_collections.ConfigDict()
    c.channels = 32  # base conv width
    c.channel_mult = (1, 2)  # one entry per resolution (width = channels * mult)
    # Per downsampling level, the stride of each axis, e.g. ((1, 2, 2), (2, 2, 2)) for video
    # [T, H, W]; () = 2 on every axis at each of the len(channel_mult) - 1 levels.
    c.strides = ()
    c.num_res_blocks = 1  # residual blocks per resolution
    c.code_dim = 8  # dimension of a code vector (the DiT's latent channels)
    c.num_codes = 256  # codebook size
    c.decay = 0.99  # EMA decay of the codebook statistics
    c.epsilon = 1e-5  # Laplace smoothing of EMA cluster sizes
    c.commitment_cost = 0.25  # weight of ||z_e - sg(z_q)||^2
    c.dead_code_threshold = 0.05  # restart codes whose EMA usage falls below this
    c.cosine = False  # l2-normalised inputs and unit-norm codes for the lookup
    c.lookup_dim = 0  # >0: look codes up in a learned low dim (0 = in code_dim)
    c.codebook_init = "random"  # "random" | "batch" | "kmeans++": first batch
    c.lookup_chunk_size = 0  # >0: argmin over codebook chunks (bounds memory)
    # Which quantizer (models/quantizers.py): "vq" (EMA codebook, the keys above) | "fsq"
    # (finite scalar: `levels`) | "lfq" (lookup-free: code_dim bits) | "rvq" (residual stages).
    c.quantizer = "vq"
    c.rotation_trick = False  # vq: gradient through the rotation onto the code (Fifty et al.)
    c.levels = (8, 5, 5, 5)  # fsq: values per dimension (prod = 1000 codes; projected if needed)
    c.entropy_weight = 0.1  # lfq: weight of per-sample minus codebook entropy
    c.diversity_gamma = 1.0  # lfq: weight of the codebook entropy inside that term
    c.inv_temperature = 100.0  # lfq: sharpness of q(code | z) in the entropy term
    c.residual_quantizer = "vq"  # rvq: the quantizer of each stage ("vq" | "fsq" | "lfq")
    c.residual_stages = 2  # rvq: stages, i.e. code ids per latent position
    c.quantizer_dropout = 0.0  # rvq: probability that a step keeps only a random prefix of stages
    # VQGAN's self-attention block at the lowest resolution of encoder and decoder: every code
    # sees the whole input (many-object RGB scenes), at the cost of attention over the grid.
    c.mid_attention = False
    c.update(overrides)
    return c


# Config variants choosing the quantizer (configs/vqdit_img.py:fsq), each at ~8 bits a position like
# the default VQ: FSQ (8, 6, 5) = 240 codes (the FSQ paper's 2^8), LFQ 8 bits, residual VQ 2 x 16.
# rotation_trick=False: a variant means what was measured, whatever its config's default VQ does.
QUANTIZER_VARIANTS = {
    "fsq": dict(quantizer="fsq", levels=(8, 6, 5), rotation_trick=False),
    "lfq": dict(quantizer="lfq", code_dim=8, rotation_trick=False),
    "rvq": dict(
        quantizer="rvq",
        residual_quantizer="vq",
        residual_stages=2,
        num_codes=16,
        rotation_trick=False,
    ),
    "rotation": dict(rotation_trick=True),
}


def sources() -> ml_collections.ConfigDict:
    """Where a single-task run's parts come from when it does not train them (top-level keys:
    `c.update(blocks.sources())`; a joint config names them per task, `tokenizer_from.<task>`)."""
    c = ml_collections.ConfigDict()
    # "" = train the tokenizer stage. Else a workdir of this project whose finished tokenizer the
    # run uses (same dataset and tokenizer model), or a pretrained image tokenizer used frozen: a
    # diffusers VQModel / AutoencoderKL folder or a taming-transformers .ckpt (docs/pretrained.md).
    c.tokenizer_from = ""
    # Text→image: "" = the caption's ids (data.text_words) condition the DiT. Else a pretrained
    # text encoder used frozen: a transformers T5EncoderModel / CLIPTextModel folder with its
    # tokenizer.json; captions are tokenized by its tokenizer (to data.text_max_len) and its last
    # hidden states, projected, reach the DiT like caption tokens do.
    c.text_encoder = ""
    return c


def quantizer_variant(model: ml_collections.ConfigDict, variants: list[str]) -> list[str]:
    """Apply the QUANTIZER_VARIANTS named in `variants` to a tokenizer.model block; returns the rest."""
    chosen = [v for v in variants if v in QUANTIZER_VARIANTS]
    if len(chosen) > 1:
        raise ValueError(f"config variants {chosen} each choose the quantizer; choose one")
    for name in chosen:
        model.update(QUANTIZER_VARIANTS[name])
    return [v for v in variants if v not in chosen]


def adversarial(**overrides) -> ml_collections.ConfigDict:
    """VQGAN's extras for the tokenizer stage (stages/adversarial.py): GAN and LPIPS terms, off."""
    c = ml_collections.ConfigDict()
    c.weight = 0.0  # > 0: weight of the hinge generator loss (times the adaptive weight)
    c.start_step = 0  # tokenizer step from which both players train (VQGAN: once recon is good)
    c.channels = 32  # PatchGAN discriminator: width of its first conv
    c.layers = 2  # its stride-2 convs (patch logits at 1/2^layers of the input's resolution)
    c.perceptual_weights = ""  # LPIPS (VGG16) weights .npz (docs/metrics.md); "" = no such term
    c.perceptual_weight = 1.0
    c.update(overrides)
    return c


def shapes_tokenizer(**model_overrides) -> ml_collections.ConfigDict:
    """The tokenizer stage of the shapes world's 32×32 RGB scenes (text→image and image→text): a
    VQ-VAE with two downsamplings to an 8×8 grid of codes and VQGAN's self-attention block at that
    resolution, so every code sees the whole scene."""
    c = ml_collections.ConfigDict()
    c.model = tokenizer_model(
        channels=16,
        channel_mult=(1, 2, 4),
        code_dim=8,
        num_codes=256,
        mid_attention=True,
        **model_overrides,
    )
    c.train = train(steps=800, batch_size=32, learning_rate=2e-3, warmup_steps=50, images_every=400)
    c.adversarial = adversarial()
    return c


def generator_model(**overrides) -> ml_collections.ConfigDict:
    """DiT of stage 2 (models/dit.py for latent grids, models/token_dit.py for token ids)."""
    c = ml_collections.ConfigDict()
    c.preset = ""  # "S" | "B" | "L" | "XL" (the DiT paper's sizes) overrides the 3 below
    c.hidden_size = 64  # transformer width
    c.depth = 4  # adaLN-Zero blocks
    c.num_heads = 4  # attention heads
    c.mlp_ratio = 4.0  # MLP hidden = mlp_ratio * hidden_size
    c.patch_size = 1  # patch size over the latent grid (Gaussian diffusion only)
    c.dtype = "float32"  # compute dtype: "float32" | "bfloat16" (parameters stay float32)
    c.remat = False  # recompute each block's activations in the backward pass (saves memory)
    # How the condition tokens reach the target tokens (models/conditioning.py): "in_context"
    # (in front of them, shared blocks) | "cross_attention" (a gated cross-attention sublayer
    # per block) | "mmdit" (SD3: per-stream weights, one joint attention).
    c.conditioning = "in_context"
    # Attention kernel (models/attention.py): "auto" (per platform and shapes: "cudnn" on NVIDIA
    # GPUs with bf16 compute and a head dim that is a multiple of 8, "splash" on TPU v4+,
    # "einsum" on CPUs, else "xla"; a fallback is logged once) | "xla"
    # (jax.nn.dot_product_attention) | "einsum" (the same maths in a [B, heads, L, D] layout:
    # faster on CPUs) | "blocked" (online softmax over key blocks: memory linear in the sequence,
    # for long sequences without a fused kernel) | "cudnn" (cuDNN's fused kernel, in bf16) |
    # "splash" (Pallas splash attention, TPU v4+).
    c.attention = "auto"
    # Gaussian and flow: the exact numerics of a PyTorch DiT's layout (models/dit.DIT_LAYOUTS:
    # timestep frequencies, position-embedding order, pre-MLP norm eps): "ours" | "facebook"
    # (facebookresearch/DiT) | "diffusers" (DiTTransformer2DModel). Set it to the layout of
    # generator.init_from's checkpoint, which it was trained under.
    c.layout = "ours"
    # X→text: the source's tokens enter the DiT as "ids" (a learned table) or "vectors" (their
    # codebook vectors, projected): vectors generalise from far fewer examples.
    c.cond_input = "vectors"
    # With "vectors": codes grouped per token, one size per source grid axis (like patch_size for
    # the target): (1, 4) makes a spectrogram's 4 mel codes of a time step one token. () = 1s.
    c.cond_patch = ()
    # With "vectors": width of a hidden GELU layer in the map pooling all condition vectors into
    # the adaLN vector (0 = a linear map; unused with cond_mean_pool).
    c.cond_pool_hidden = 0
    # X→text, vector conditions: dropout rate on the source's code-vector features in training.
    c.cond_dropout = 0.0
    # With "vectors": pool the condition tokens into the adaLN vector by their masked mean instead
    # of a map of all positions' features (whose size grows with the source's length: long clips).
    c.cond_mean_pool = False
    # With "vectors": widths of convolutions over the source's code grid before the DiT reads it
    # (models/condition_stem.py; () = none). Their features are grouped by cond_patch, and their
    # max/mean over the grid, which do not move when the content moves, make the adaLN vector.
    c.cond_conv = ()
    c.cond_conv_kernel = ()  # the stem's kernel, one size per axis of the code grid; () = 3s
    # The stem's first conv steps by this, per axis (() = 1s): a fine grid read at its full
    # resolution, the other layers and the DiT's tokens at a coarser one (cond_patch divides it).
    c.cond_conv_stride = ()
    c.update(overrides)
    return c


def diffusion(process: str, **overrides) -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    # "gaussian" (continuous VQ latents) | "masked" (token ids) | "flow" (rectified flow, latents)
    c.process = process
    # gaussian: "linear" | "cosine" noise schedule; masked: "linear" | "cosine" | "sine" masking.
    c.schedule = "cosine"
    # gaussian: "uniform" (DDPM's simple loss) | "min_snr" (min-SNR-γ, Hang et al. 2023);
    # masked: "elbo" (MDLM) | "masked_mean" (MaskGIT). diffusion/gaussian.py, diffusion/masked.py.
    c.loss_weighting = "elbo" if process == "masked" else "uniform"  # flow: not used
    c.min_snr_gamma = 5.0  # gaussian, loss_weighting="min_snr": the SNR at which weights clip
    c.timesteps = 1000  # T of the Gaussian forward process (masked time is continuous)
    c.prediction = "v"  # Gaussian only: "eps" | "v"
    # Flow: how training draws t in [0, 1] (1 = noise): "uniform" | "logit_normal" (SD3: t =
    # sigmoid(n), n ~ N(logit_mean, logit_std): most training at intermediate t). diffusion/flow.py.
    c.time_sampling = "logit_normal"
    c.logit_mean = 0.0  # flow, logit_normal: mean of n (> 0 trains noisier times more)
    c.logit_std = 1.0  # flow, logit_normal: standard deviation of n
    c.cond_drop = 0.1  # probability of dropping the condition (trains classifier-free guidance)
    # Masked, byte captions: fraction of captions masked word by word instead of byte by byte (a
    # word hidden whole must be read from the source, not spelled from its visible letters).
    c.word_mask_prob = 0.0
    c.update(overrides)
    return c


def sample(process: str, **overrides) -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    # Gaussian: "ddim" | "ddpm" | "dpmpp_2m" (DPM-Solver++(2M), diffusion/dpm_solver.py); DDIM with
    # eta = 0 is the Euler probability-flow sampler. Masked: see below. Flow: "euler" | "heun"
    # (diffusion/flow_samplers.py; Heun calls the model twice a step).
    c.sampler = {"gaussian": "ddim", "masked": "maskgit", "flow": "heun"}[process]
    c.steps = 50  # sampler steps (DDPM always uses all T; MaskGIT unmasks over this many)
    c.eta = 0.0  # DDIM eta: 0 = deterministic
    c.guidance = 4.0  # classifier-free guidance scale (1 = conditional only)
    # Gaussian and flow: guide only the steps at time (t + 1) / T (flow: t) in (lo, hi]
    # (Kynkäänniemi et al. 2024), the conditional output elsewhere; (0.0, 1.0) = every step.
    c.guidance_interval = (0.0, 1.0)
    c.snap_to_codebook = True  # Gaussian and flow: quantize sampled latents before decoding
    c.shift = 1.0  # flow: SD3's timestep shift of the ODE's time grid (> 1: more steps near noise)
    c.schedule = "cosine"  # MaskGIT: how many tokens stay masked after each step
    c.temperature = 1.0  # MaskGIT: token sampling temperature (0 = argmax)
    c.choice_temperature = 0.0  # MaskGIT: Gumbel noise on confidences (0 = greedy by confidence)
    # Masked samplers (diffusion/masked_decoding.py; all read steps, schedule and temperature):
    # "maskgit" | "remdm" (ReMDM: committed tokens may be masked again) | "semi_ar" (blocks left
    # to right) | "threshold" (Fast-dLLM: every sure token at once; stops when none is masked).
    c.remask_cap = 0.1  # remdm: η_cap, the largest fraction of committed tokens a step remasks
    c.block_size = 4  # semi_ar: positions per block; the steps are shared evenly by the blocks
    c.threshold = 0.9  # threshold: commit every masked token at least this likely (>= 1 a step)
    c.update(overrides)
    return c


def latents(**overrides) -> ml_collections.ConfigDict:
    """Text→image, gaussian/flow: the training images encoded once by the frozen tokenizer into
    ArrayRecord shards on disk (stages/latent_precompute.py), as the DiT recipe does."""
    c = ml_collections.ConfigDict()
    # Encode every training image once, over every device and process, before the generator
    # trains; the generator then reads latents, never pixels. Resumable; reused by later runs.
    c.precompute = False
    c.dir = ""  # where the shards go ("" = WORKDIR/latents); another run's folder is reused
    c.flip = True  # also store each image's horizontal flip; training picks one of the two
    c.shard_size = 1024  # examples per shard (one file, written by one process)
    c.batch_size = 64  # images per encoder call, split over each process's own devices
    c.dtype = "float16"  # stored latents: "float16" (half the bytes) | "float32"
    c.update(overrides)
    return c


def generator(
    process: str,
    *,
    model: dict | None = None,
    diffusion_overrides: dict | None = None,
    sample_overrides: dict | None = None,
    train_overrides: dict | None = None,
) -> ml_collections.ConfigDict:
    """Stage 2 of every task: a DiT generating the target by the diffusion `process`. One schema
    for all tasks; a field that does not apply to a task is ignored by it."""
    c = ml_collections.ConfigDict()
    c.model = generator_model(**(model or {}))
    # Gaussian and flow: "" = a random init. Else a pretrained DiT checkpoint the generator starts
    # from, at the stage's fresh start only (fine-tuning; stages/init_from.py): a facebookresearch
    # .pt or a diffusers DiTTransformer2DModel folder, of generator.model's architecture.
    c.init_from = ""
    # With init_from: the top-level parameter groups of the DiT (e.g. "cond_embed", "label_embed",
    # "patch_embed", "final_layer") whose parameters are freshly initialised where the checkpoint
    # lacks them or shapes them differently; any other such parameter is refused.
    c.init_reinit = ()
    # X→text, training-time augmentation (stages/augment.py): per source axis (image [H, W],
    # spectrogram [frames, mels], clip [T, H, W]), the largest random translation; () = none.
    c.source_shift = ()
    # X→text: random rotation and scaling of image and clip sources in training: (largest angle
    # in degrees, largest relative scale change), e.g. (10.0, 0.1); (0.0, 0.0) = none.
    c.source_affine = (0.0, 0.0)
    # Run the frozen tokenizer over the training set once, before training, instead of in every
    # step (the sources of X→text, the images of text→image). Then source_shift cannot apply
    # (the sources are gone); code_shift translates the grid of code ids instead, per axis.
    c.precompute_codes = False
    c.code_shift = ()
    c.latents = latents()
    c.diffusion = diffusion(process, **(diffusion_overrides or {}))
    c.sample = sample(process, **(sample_overrides or {}))
    c.train = train(**(train_overrides or {}))
    return c


def joint_trunk(**overrides) -> ml_collections.ConfigDict:
    """The trunk of a joint generator (models/joint_dit.py): the blocks and timestep embedder all
    tasks share; each task's input layers and head come from its own generator.model block."""
    c = ml_collections.ConfigDict()
    c.hidden_size = 128  # transformer width
    c.depth = 6  # adaLN-Zero blocks
    c.num_heads = 4  # attention heads
    c.mlp_ratio = 4.0  # MLP hidden = mlp_ratio * hidden_size
    c.dtype = "float32"  # compute dtype: "float32" | "bfloat16" (parameters stay float32)
    c.remat = False  # recompute each block's activations in the backward pass (saves memory)
    # How every task's condition reaches its target tokens (models/conditioning.py).
    c.conditioning = "cross_attention"
    c.attention = "auto"  # attention kernel (models/attention.py; generator_model's comment)
    c.update(overrides)
    return c


def text_generator(
    text_max_len: int, *, sample_overrides: dict | None = None, **train_overrides
) -> ml_collections.ConfigDict:
    """The generator block of the X→text configs: a DiT writing caption tokens by masked
    diffusion, MaskGIT-style (sine masking, plain mean CE), by default one token a step, most
    confident first (docs/results.md says why); `sample_overrides` choose another decoding."""
    return generator(
        "masked",
        model=dict(hidden_size=96, depth=4, num_heads=4),
        diffusion_overrides=dict(schedule="sine", loss_weighting="masked_mean", cond_drop=0.0),
        sample_overrides={
            "steps": text_max_len,
            "schedule": "linear",
            "guidance": 1.0,
            "temperature": 0.0,
            **(sample_overrides or {}),
        },
        train_overrides={
            "batch_size": 32,
            "learning_rate": 1e-3,
            "warmup_steps": 100,
            "weight_decay": 0.01,
            "images_every": 500,
            **train_overrides,
        },
    )


def text_task_smoke(c: ml_collections.ConfigDict, num_examples: int = 16) -> None:
    """The `:smoke` variant of an X→text config: tiny models, a few steps, a few test examples."""
    c.tokenizer.model.update(channels=8, num_codes=32)
    c.generator.model.update(hidden_size=32, depth=1, num_heads=2)
    if c.generator.model.cond_conv:  # the stem still runs, one narrow layer
        c.generator.model.cond_conv = (8,)
    c.generator.sample.steps = 4
    c.eval.update(num_examples=num_examples, batch_size=num_examples)
    smoke_train(c.tokenizer)
    smoke_train(c.generator)
