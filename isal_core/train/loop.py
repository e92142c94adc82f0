"""Supervised training through the adapter, for every round of active learning.

Every round retrains the model on the labeled set, so training is seeded (shuffling,
augmentation) to make rounds comparable and results reproducible. The initial weights
are drawn when the model is built: `Learner.fit` seeds before building it.

Under torchrun (isal_core.utils.distributed) it is DistributedDataParallel: every rank draws the
same shuffled global batches and trains on its slice of each; the loss is scaled so the
averaged gradient is the global batch's mean. A model without BatchNorm or random
augmentation therefore trains to the one-process model within float tolerance; with
them, each rank's batch statistics and augmentation draws are its own (the difference is
measured in the README, "Scaling out").
"""
from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn
from torch.utils.data import BatchSampler, DataLoader, Dataset, RandomSampler
from tqdm import tqdm

from ..errors import DataError, NonFiniteError
from ..settings import TrainSettings
from ..tasks.base import TaskAdapter
from ..utils import distributed
from ..utils.progress import report
from ..utils.runtime import resolve_device, seed_everything


def scheduled_epochs(settings: TrainSettings, steps_per_epoch: int) -> int:
    """`epochs`, raised so that training takes at least `min_steps` optimizer steps.

    Counted in epochs alone, a model on 100 labels (batch 64) gets a handful of steps and
    one on 5,000 gets thousands: small labeled sets would never converge, and the
    accuracy swings of an unconverged model drown any selection effect.
    """
    if settings.min_steps <= 0 or steps_per_epoch <= 0:
        return settings.epochs
    return max(settings.epochs, -(-settings.min_steps // steps_per_epoch))


def milestone_epochs(settings: TrainSettings, epochs: int | None = None) -> list[int]:
    """Epoch indices where the lr drops: fractions of the epochs, rounded (0.8 of 200 -> 160)."""
    epochs = settings.epochs if epochs is None else epochs
    return sorted({max(1, round(f * epochs)) for f in settings.milestones})


def build_optimizer(model: nn.Module, settings: TrainSettings, epochs: int | None = None):
    """SGD + MultiStepLR stepped once per epoch, as in the paper."""
    optimizer = torch.optim.SGD(model.parameters(), lr=settings.lr, momentum=settings.momentum,
                                weight_decay=settings.weight_decay)
    milestones = milestone_epochs(settings, epochs)
    scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones, gamma=settings.gamma)
    return optimizer, scheduler


def _check_labels(dataset: Dataset) -> None:
    labels = getattr(dataset, "labels", None)
    if labels is not None:
        bad = [i for i, y in enumerate(labels) if y is None or (isinstance(y, int) and y < 0)]
        if bad:
            raise DataError(f"cannot train on unlabeled items: {len(bad)} item(s), e.g. index {bad[0]}")


#: A diverged training restarts from its initial weights with the learning rate times each factor in turn,
#: gradients clipped to CLIP_NORM, before it gives up.
RECOVERY_LR_FACTORS = (0.1, 0.01, 0.001)
CLIP_NORM = 10.0


def train(model: nn.Module, adapter: TaskAdapter, dataset: Dataset, settings: TrainSettings, seed: int = 0,
          device="cpu", workers: int = 0, progress: bool = False,
          warn: Callable[[str], None] = lambda message: None) -> nn.Module:
    """Train `model` in place on (inputs, target, index) items with the adapter's loss; returns it in eval mode.

    Raises DataError for an empty dataset or unlabeled items. A loss that stops being finite
    (a learning rate too high for this data, a detector's early steps) does not fail the
    round: training starts again from the same initial weights with a lower learning rate and
    clipped gradients (RECOVERY_LR_FACTORS), and `warn` hears what happened. Only when every
    retry diverges too (NaN in the data, say) is it a NonFiniteError naming the setting to change.
    """
    if len(dataset) == 0:
        raise DataError("cannot train on an empty dataset")
    _check_labels(dataset)
    initial = {k: v.detach().clone() for k, v in model.state_dict().items()}
    try:
        return _train_once(model, adapter, dataset, settings, seed, device, workers, progress)
    except NonFiniteError as diverged:
        first = str(diverged)
    for factor in RECOVERY_LR_FACTORS:
        model.load_state_dict(initial)
        lr = settings.lr * factor
        try:
            model = _train_once(model, adapter, dataset, settings.model_copy(update={"lr": lr}), seed, device, workers,
                                progress, clip=CLIP_NORM)
        except NonFiniteError:
            continue
        warn(f"training diverged at lr {settings.lr:g} ({first}); it recovered by training again from the same "
             f"initial weights at lr {lr:g} with gradients clipped to norm {CLIP_NORM:g}: consider a lower lr "
             f"(ISAL_LR, --lr)")
        return model
    raise NonFiniteError(f"training diverged ({first}) and diverged again from the same initial weights at lr "
                         f"{', '.join(f'{settings.lr * f:g}' for f in RECOVERY_LR_FACTORS)} with gradients clipped "
                         f"to norm {CLIP_NORM:g}: check the data for NaN/inf values, or set a much lower lr "
                         f"(ISAL_LR, --lr; now {settings.lr:g})")


def _train_once(model: nn.Module, adapter: TaskAdapter, dataset: Dataset, settings: TrainSettings, seed: int,
                device, workers: int, progress: bool, clip: float | None = None) -> nn.Module:
    """One training run; NonFiniteError as soon as the loss stops being finite."""
    seed_everything(seed)
    device = resolve_device(device)
    # BatchNorm cannot train on a batch of one; drop such a trailing batch (one random item per epoch).
    drop_last = len(dataset) > settings.batch_size and len(dataset) % settings.batch_size == 1
    rank, world = distributed.rank_and_size()
    shuffle = torch.Generator().manual_seed(seed)  # (the loader draws its worker seeds from it too, as before)
    batches = RankSlice(BatchSampler(RandomSampler(dataset, generator=shuffle), settings.batch_size, drop_last),
                        rank, world)
    loader = DataLoader(dataset, batch_sampler=batches, generator=shuffle, num_workers=workers,
                        collate_fn=adapter.collate_fn, pin_memory=device.type == "cuda",
                        persistent_workers=workers > 0)
    model.to(device)
    net = model if world == 1 else nn.parallel.DistributedDataParallel(model)
    epochs = scheduled_epochs(settings, len(loader))
    optimizer, scheduler = build_optimizer(model, settings, epochs)
    for epoch in range(1, epochs + 1):
        net.train()
        bar = tqdm(loader, desc=f"epoch {epoch}/{epochs}", leave=False, disable=not progress)
        for step, batch in enumerate(bar, start=1):
            report("training steps", (epoch - 1) * len(loader) + step - 1, epochs * len(loader))
            inputs, targets = adapter.to_device(batch, device)
            targets = adapter.check_targets(targets, f"the training batch at epoch {epoch} step {step}")
            losses = adapter.loss(adapter.forward(net, inputs), targets)
            loss = losses.mean() if world == 1 else _global_mean(losses, world, device)
            if not torch.isfinite(loss if world == 1 else distributed.all_finite(loss)):
                raise NonFiniteError(f"training loss is NaN/inf at epoch {epoch} step {step}")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if clip is not None:
                torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
            optimizer.step()
            bar.set_postfix(loss=f"{loss.item():.4f}", lr=f"{optimizer.param_groups[0]['lr']:.3g}")
        scheduler.step()
    report("training steps", epochs * len(loader), epochs * len(loader))
    return model.eval()


class RankSlice:
    """The global batches of `batches` (the same on every rank: same seed), each cut to this rank's
    slice; one process gets them whole."""

    def __init__(self, batches: BatchSampler, rank: int, world: int):
        self.batches, self.rank, self.world = batches, rank, world

    def __iter__(self):
        for batch in self.batches:
            yield batch[self.rank::self.world]

    def __len__(self) -> int:
        return len(self.batches)


def _global_mean(losses: torch.Tensor, world: int, device) -> torch.Tensor:
    """This rank's share of the global batch's mean loss: DDP averages gradients over the ranks, so
    sum(local) * world / global count makes that average the one-process gradient."""
    count = torch.tensor([float(len(losses))], device=device)
    torch.distributed.all_reduce(count)
    return losses.sum() * world / count[0]
