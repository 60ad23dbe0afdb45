"""The tasks a config can name: which modality conditions and which one is generated.

Every task trains the same two stages: a VQ-VAE tokenizer for its continuous modality (image,
log-mel spectrogram, video; each one entry of data/modalities.py), then a DiT generating the
target (the (diffusion process, target) table of stages/generators.py). Text is never learned by
a tokenizer: it is UTF-8 bytes or words of a vocabulary (data/text.py).
"""

from __future__ import annotations

import dataclasses

from crossmodal_jax.errors import UserError

TEXT = "text"
# config.task of a joint config (configs/shapes_joint.py): one generator for the tasks it lists
# under config.tasks (joint_run.py).
JOINT = "joint"


@dataclasses.dataclass(frozen=True)
class Task:
    name: str
    source: str  # modality of the condition: "text" | "image" | "audio" | "video"
    target: str  # modality the generator produces

    @property
    def continuous(self) -> str:
        """The modality the stage-1 tokenizer learns (batch key of its input)."""
        return self.target if self.source == TEXT else self.source

    @property
    def generates_text(self) -> bool:
        return self.target == TEXT


TASKS: dict[str, Task] = {
    "text2image": Task("text2image", source=TEXT, target="image"),
    "image2text": Task("image2text", source="image", target=TEXT),
    "speech2text": Task("speech2text", source="audio", target=TEXT),
    "video2text": Task("video2text", source="video", target=TEXT),
}


def get_task(name: str) -> Task:
    """The task a config names; one-line UserError if there is none such."""
    if name not in TASKS:
        raise UserError(f"unknown task {name!r}; available: {', '.join(TASKS)}")
    return TASKS[name]
