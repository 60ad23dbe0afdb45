"""The joint generator stage: one model (models/joint_dit.JointDiT) trained on several tasks at
once, each task an `Experiment` of its own (dataset, tokenizer, caption vocabulary, process).

`attach_joint_model` gives every task's experiment its view of one joint model
(`Experiment.generator_model`); the task's single-task stage (stages/generators.py) then yields
its objective, data, frozen state and summaries unchanged, and `joint_generator_stage` combines
them into one stage:

- batch: every task's iterator stepped together, `rows_k` rows of task k in each global batch of
  B rows (data/mixture.py), fixed shapes under jit and no padding;
- loss: sum_k share_k * loss_k with share_k = w_k rows_k / sum_j w_j rows_j (`task_shares`): the
  mean over the batch's examples of each one's own task's loss, an example of task k weighing w_k
  (`generator.loss_weights`, 1 each by default); each task's objective runs on its own rows with
  its own key (fold_in(key, k));
- model_state: {task: that task's frozen state (its tokenizer, latent statistics)};
- summaries: each task's, its name in front of every tag.
"""

from __future__ import annotations

from collections.abc import Mapping

import jax
import ml_collections

from crossmodal_jax.data.mixture import MixtureIterator, task_batch, task_rows
from crossmodal_jax.experiment import Experiment
from crossmodal_jax.logs.writers import PrefixedWriter
from crossmodal_jax.models.joint_dit import JointDiT, merge_view_variables, view_spec
from crossmodal_jax.stages import builders
from crossmodal_jax.stages.generators import NAME, generator_stage
from crossmodal_jax.training.stage import StageSpec
from crossmodal_jax.training.step import TrainState


def build_joint_model(exps: Mapping[str, Experiment], m: ml_collections.ConfigDict) -> JointDiT:
    """The joint model over every task's own generator model (its input layers and head), with
    the trunk (blocks, timestep embedder) that `m` (the joint generator.model block) describes."""
    specs = tuple(
        view_spec(name, builders.build_generator_model(exps[name], own=True))
        for name in sorted(exps)
    )
    return JointDiT(
        specs=specs,
        hidden_size=m.hidden_size,
        depth=m.depth,
        num_heads=m.num_heads,
        mlp_ratio=m.mlp_ratio,
        dtype=builders.DTYPES[m.dtype],
        remat=m.remat,
        conditioning=m.conditioning,
        attention=m.attention,
    )


def attach_joint_model(exps: Mapping[str, Experiment], m: ml_collections.ConfigDict) -> JointDiT:
    """Build the joint model and make it every task's generator model (its own view)."""
    joint = build_joint_model(exps, m)
    for name, exp in exps.items():
        exp.generator_model = joint.clone(task=name)
        exp.built.pop("sampler", None)  # a sampler built before used the task's own model
    return joint


def view_state(state: TrainState, task: str) -> TrainState:
    """The joint state as one task's generator state: all parameters (the view picks its own),
    that task's frozen model_state."""
    return state.replace(model_state=state.model_state[task])


def task_shares(rows: Mapping[str, int], weights: Mapping[str, float]) -> dict[str, float]:
    """Each task's share of the joint loss: its rows times its loss weight, normalised to sum 1
    (the weighted mean over the batch's examples)."""
    mass = {name: rows[name] * float(weights[name]) for name in rows}
    total = sum(mass.values())
    if not total > 0:
        raise ValueError(f"loss weights {dict(weights)} give every task's rows zero weight")
    return {name: m / total for name, m in mass.items()}


def joint_generator_stage(
    exps: Mapping[str, Experiment], gen: ml_collections.ConfigDict
) -> StageSpec:
    """The one generator stage of a joint run (`attach_joint_model` first). `gen` is the joint
    config's generator block: train (the global batch), mixture (task -> weight), loss_weights
    (task -> weight of its examples in the loss)."""
    rows = task_rows(gen.train.batch_size, dict(gen.mixture))
    for name, exp in exps.items():
        if exp.generator_model is None:
            raise ValueError(f"task {name!r} has no view of a joint model: attach_joint_model")
        if exp.config.generator.train.batch_size != rows[name]:
            raise ValueError(
                f"task {name!r} draws {exp.config.generator.train.batch_size} rows a step, the "
                f"mixture gives it {rows[name]}"
            )
    names = sorted(exps)
    specs = {name: generator_stage(exps[name]) for name in names}
    share = task_shares(rows, dict(gen.loss_weights))

    def init_variables(key):
        return merge_view_variables(
            {n: specs[n].init_variables(jax.random.fold_in(key, i)) for i, n in enumerate(names)}
        )

    def objective(params, model_state, batch, key):
        total, new_state, metrics = 0.0, {}, {}
        for i, name in enumerate(names):
            loss, (state, task_metrics) = specs[name].objective(
                params, model_state[name], task_batch(batch, name), jax.random.fold_in(key, i)
            )
            total = total + share[name] * loss
            new_state[name] = state
            metrics[f"{name}/loss"] = loss
            metrics.update({f"{name}/{k}": v for k, v in task_metrics.items()})
        return total, (new_state, metrics)

    def summarize(state, step, writer):
        for name in names:
            if specs[name].summarize is not None:
                specs[name].summarize(view_state(state, name), step, PrefixedWriter(writer, name))

    return StageSpec(
        name=NAME,
        train_cfg=gen.train,
        init_variables=init_variables,
        objective=objective,
        make_iterator=lambda: MixtureIterator({n: specs[n].make_iterator() for n in names}),
        frozen_state={name: specs[name].frozen_state for name in names},
        summarize=summarize,
    )
