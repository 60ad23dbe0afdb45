"""The shared training machinery: the stage interface, the loop, the jit-compiled step,
sharding, checkpoints and guards. It knows nothing about tokenizers or diffusion and imports
nothing above it (only errors and logs)."""
