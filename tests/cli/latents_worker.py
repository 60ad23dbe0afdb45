"""One process of the latent precompute tests (tests/cli/test_imagenet256_cli.py): builds the
imagenet256 smoke experiment (TFDS's mock ImageNet, a random-weight VAE) and encodes its training
split into `--folder`; with `--num_processes` it joins a jax.distributed job first.

  python tests/cli/latents_worker.py FOLDER [--die_after=N] [COORDINATOR NUM_PROCESSES PROCESS_ID]

`--die_after=N` ends the process abruptly (os._exit) after its N-th shard, with a half-written
temporary file of the next one left behind: a killed run.
"""

import importlib.util
import os
import sys


def main(argv: list[str]) -> None:
    folder, rest = argv[0], argv[1:]
    die_after = next((int(a.split("=")[1]) for a in rest if a.startswith("--die_after=")), 0)
    rest = [a for a in rest if not a.startswith("--die_after=")]
    import jax

    if rest:
        coordinator, num, index = rest
        jax.distributed.initialize(coordinator, int(num), int(index))
    from crossmodal_jax.data import latent_shards
    from crossmodal_jax.stages import latent_precompute, tokenizer
    from crossmodal_jax.stages.tokenizer import tokenizer_variables

    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    spec = importlib.util.spec_from_file_location(
        "cfg", os.path.join(root, "configs/imagenet256.py")
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    config = module.get_config("smoke")
    config.generator.latents.dir = folder
    if os.environ.get("MOCK_EXAMPLES"):
        config.data.tfds_mock_examples = int(os.environ["MOCK_EXAMPLES"])
    from crossmodal_jax.run import build_experiment

    exp = build_experiment(config, os.path.join(folder, "run"), {"data": -1})
    assert tokenizer.NAME in exp.results  # the pretrained VAE's frozen variables
    if die_after:
        write, written = latent_shards.write_shard, []

        def dying_write(where, name, records):
            if len(written) == die_after:
                (where / f".{name}.array_record.tmp-{os.getpid()}").write_bytes(b"half")
                os._exit(3)
            write(where, name, records)
            written.append(name)

        latent_shards.write_shard = dying_write
    stored = latent_precompute.precompute_latents(exp, tokenizer_variables(exp))
    print("STATS", stored["stats"]["std"], flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
