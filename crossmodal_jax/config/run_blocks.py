"""Config blocks of a run: each stage's optimisation (`train`), the mesh, monitoring, the data and
the evaluation. Re-exported by `blocks`, the namespace config files use (blocks.py says why the
blocks live in the package).
"""

from __future__ import annotations

import ml_collections


def train(**overrides) -> ml_collections.ConfigDict:
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
    c.grad_clip = 1.0  # clip gradients to this global norm (0 = no clipping)
    c.ema_decay = 0.0  # EMA of the weights used for sampling/eval; 0 keeps a plain copy
    c.log_every = 50  # steps between logged scalars (metrics.jsonl, TensorBoard, progress line)
    c.images_every = 500  # steps between summaries (reconstructions/samples); 0 = only at the end
    c.checkpoint_every = 500  # steps between checkpoints (the last step is always saved)
    c.keep_checkpoints = 3  # how many recent checkpoints to keep
    c.skip_nonfinite = False  # NaN/Inf loss or grads: False stops the run, True skips the update
    c.update(overrides)
    return c


def smoke_train(stage: ml_collections.ConfigDict) -> None:
    """A few tiny steps with every periodic action exercised: for tests."""
    stage.train.update(
        steps=6, batch_size=16, warmup_steps=2, log_every=2, images_every=0, checkpoint_every=3
    )


def mesh() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    # -1: all other devices. sequence > 1 splits the tokens of every activation (sequence
    # parallelism, for long token sequences; the batch is not split over it).
    c.shape = ml_collections.ConfigDict(dict(data=-1, fsdp=1, sequence=1, tensor=1))
    # Multi-slice / multi-host: how many slices (TPU slices; processes on GPUs and CPUs) each axis
    # of `shape` spans over the slow network, e.g. data=2: data parallel across two slices,
    # fsdp and tensor inside each. All 1: one slice (devices laid out in order).
    c.dcn_shape = ml_collections.ConfigDict(dict(data=1, fsdp=1, sequence=1, tensor=1))
    # Logical axis -> mesh axes. See crossmodal_jax/sharding.py for the names and the presets.
    c.rules = [
        ["batch", ["data", "fsdp"]],
        ["seq", "sequence"],
        ["kv_seq", None],
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
    return c


def monitoring() -> ml_collections.ConfigDict:
    """What the logs say of the hardware (top-level keys: --config.peak_tflops=...)."""
    c = ml_collections.ConfigDict()
    # One device's peak TFLOP/s: logged steps then show the MFU. 0 = from the device table
    # (training/throughput.py: TPUs, NVIDIA H100/H200/A100/B200); none for CPUs.
    c.peak_tflops = 0.0
    # "a,b": a jax.profiler trace of steps a..b of each stage in <workdir>/<stage>/profile.
    c.profile_steps = ""
    # JAX's persistent compilation cache (training/compile_cache.py), shared by every run and the
    # sample CLI of this user: a rerun or resume reads its compiled programs back instead of
    # compiling them again (docs/reliability.md gives cold and warm times). "" = off.
    c.compilation_cache_dir = "~/.cache/crossmodal_jax/xla"
    return c


def data(name: str, modality: str, **overrides) -> ml_collections.ConfigDict:
    """The data block of every task: the dataset, the caption tokenizer, and how user data
    (data.name = "folder" or "tfds") is converted; `modality` is the task's continuous one."""
    c = ml_collections.ConfigDict()
    # An embedded dataset (crossmodal_jax/data/sources.py), "folder" (data/folders.py) or "tfds"
    # (data/tfds_sources.py).
    c.name = name
    c.data_dir = ""  # dataset cache; "" = $CROSSMODAL_DATA_DIR or ~/.cache/crossmodal_jax
    # Caption tokenizer: one token per word of this vocabulary; "" = UTF-8 bytes (any text).
    c.text_words = ""
    # True: each caption is one of a label dataset's class captions (data.name="tfds" with labels:
    # imagenet2012, cifar10, ...) and conditions the generator as a class label (DiT's label
    # embedding; data/text.py ClassTokenizer); prompts name a class or its index.
    c.text_classes = False
    c.text_max_len = 32  # caption length in tokens, the end token included
    c.worker_count = 0  # grain worker processes (0 = in the main process)
    # Resume although a folder or TFDS dataset's training records changed since the workdir's
    # first run (data/fingerprint.py): the data iterator's position then means other records.
    c.allow_changed_data = False
    # Shapes world, X→text: train on one caption per picture, a two-object caption in canonical
    # form (`a Y left of a X` for `a X right of a Y`; data/shapes.py canonical_caption), so the
    # captioner never mixes the two right captions of one image.
    c.canonical_captions = False
    if modality == "audio":
        c.audio = audio_features()
    if modality == "video":
        # Frames mean-pooled to this size before the tokenizer (0 = keep): a cheaper tokenizer
        # input when the clip's content is coarse.
        c.frame_size = 0
    folder_data(c, modality)
    tfds_data(c, modality)
    c.update(overrides)
    return c


def audio_features(**overrides) -> ml_collections.ConfigDict:
    """Log-mel features (data/features.py): silence trimmed, loudness normalised, padded/cut."""
    c = ml_collections.ConfigDict()
    c.num_samples = 49152  # clip length at 16 kHz after trimming (3.07 s)
    c.n_fft = 512  # STFT window (32 ms)
    c.hop = 256  # STFT hop (16 ms)
    c.n_mels = 32  # mel bands
    c.fmin = 20.0  # lowest mel band edge (Hz)
    c.fmax = 8000.0  # highest mel band edge (Hz)
    # How a trimmed clip fills num_samples (data/padded_audio.py): "centre" (centre-cut or padded;
    # every frame is read) | "end" (from sample 0, padded at the end; the batch's "audio_mask"
    # keeps padded frames out of the tokenizer's loss and the DiT's attention; longer clips are
    # cut at the end with one warning).
    c.padding = "centre"
    # Compute every clip's features once and keep them in memory (short clips; a run of the
    # embedded speech datasets). False: computed by the grain pipeline (data.worker_count
    # workers) each time a clip is read, for splits whose features do not fit in memory.
    c.in_memory = True
    c.update(overrides)
    return c


def folder_data(data: ml_collections.ConfigDict, modality: str, **overrides) -> None:
    """Adds the keys of `data.name = "folder"` (format: crossmodal_jax/data/folders.py) to a
    config's data block; the defaults convert files to the shapes of the embedded dataset."""
    data.path = ""  # data.name="folder": DIR holding train/ and test/, each with captions.jsonl
    data.modality = modality  # the folder's files: "image" | "audio" | "video"
    data.skip_bad_records = False  # bad file/caption line: False stops the run; True skips it
    _media_keys(data, modality)
    data.update(overrides)


def tfds_data(data: ml_collections.ConfigDict, modality: str, **overrides) -> None:
    """Adds the keys of `data.name = "tfds"` (crossmodal_jax/data/tfds_sources.py) to a config's
    data block; `modality` is the config's ("image" adds image_size and channels if missing)."""
    # data.name="tfds": mnist | cifar10 | imagenet2012 | coco_captions | librispeech | ucf101,
    # optionally with "/config" or ":version"; prepared in data.data_dir ("" = $TFDS_DATA_DIR or
    # ~/tensorflow_datasets)
    data.tfds_name = ""
    data.tfds_train_split = ""  # TFDS split trained on, e.g. "train[:10%]"; "" = the dataset's
    data.tfds_test_split = ""  # TFDS split evaluated, e.g. "test[:500]"; "" = the dataset's
    # > 0: read this many of tfds's own mock examples (random values of the dataset's features)
    # instead of a prepared dataset: smoke runs and tests of a real-data config on a fresh checkout.
    data.tfds_mock_examples = 0
    # Images: the centre square after scaling the short side (ADM's centre crop, the DiT paper's
    # ImageNet data) instead of a resize to the square; False keeps a resize.
    data.center_crop = False
    _media_keys(data, modality)
    data.update(overrides)


def _media_keys(data: ml_collections.ConfigDict, modality: str) -> None:
    """How user data (folder, tfds) is converted; added once, whichever helper comes first."""
    if modality in ("image", "video") and "image_size" not in data:
        data.image_size = 8 if modality == "image" else 32  # images/frames resized to this square
        data.channels = 1  # 1 = grayscale, 3 = RGB
    if modality == "video" and "frames" not in data:
        data.frames = 8  # clips centre-cut, or padded with their last frame, to this many frames


def evaluation(**overrides) -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.batch_size = 128  # batch for test-split evaluation
    c.samples_per_prompt = 8  # text→image: images per prompt in grids and the digit accuracy
    c.prompts = ()  # text→image: prompts shown in sample grids
    c.num_examples = 0  # test examples evaluated at the end (0 = the whole split)
    # Steps between evaluations during training (0 = only at the end): the stage's loss on the
    # first `every_examples` test examples, and its task metric on them (tokenizer: PSNR; X→text:
    # exact captions, WER; text→image: Fréchet distance, accuracy), logged as eval/* scalars.
    c.every = 0
    c.every_examples = 256
    # Evaluate the test split after training; False: metrics.json is {} (quick checks, sweeps
    # that evaluate separately). A later run of the same workdir can evaluate it.
    c.at_end = True
    # text→image: train images the small feature classifier learns from (0 = all); its hidden
    # layer is the space of the classifier Fréchet distance (evaluation/image_generation.py).
    c.classifier_examples = 10000
    # text→image on the shapes world: the attribute detector's renders and Adam steps
    # (evaluation/shapes_detector.py); trained once per machine, cached beside the datasets.
    c.detector_examples = 20000
    c.detector_steps = 1500
    # text→image: InceptionV3 weights of pytorch-fid (.npz, or .pth with torch installed) for
    # FID and Inception Score; "" = none (nothing is downloaded).
    c.inception_weights = ""
    # text→image with inception_weights: FID and Inception Score of this many generated images,
    # made in shards over every device and process (captions of the test split dealt i mod
    # their count; evaluation/fid_eval.py); 0 = one image per test caption, up to num_examples.
    c.num_samples = 0
    # With num_samples: reference statistics, an .npz with mu and sigma (ADM's layout, e.g.
    # VIRTUAL_imagenet256_labeled.npz); "" = computed from the test split's real images.
    c.reference_stats = ""
    c.update(overrides)
    return c
