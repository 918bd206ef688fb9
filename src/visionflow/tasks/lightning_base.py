"""The Lightning side shared by families: one ``model_step``, optimiser, schedule, loss guard.

The nn.Module inside knows nothing of Lightning; this module knows nothing of
the architecture beyond calling the family's ``model_step``.
"""

from __future__ import annotations

from typing import Any, TypeVar

import lightning as L
import torch
from pydantic import BaseModel, ValidationError

from visionflow.config import OptimParams
from visionflow.config_errors import describe_errors
from visionflow.models.checkpoints import TASK_KEY

Section = TypeVar("Section", bound=BaseModel)


# On an accelerator, reading the loss's finiteness back is a host-device sync that stalls the
# queue of kernels: there the flag is kept on the device and read every this many steps.
FINITE_CHECK_EVERY = 50


class NonFiniteLossError(FloatingPointError):
    pass


class TaskModule(L.LightningModule):
    """Subclasses implement ``model_step(batch) -> (outputs, losses)`` with ``losses["loss"]``.

    ``optim`` is a family's typed ``train`` params (epochs, lr, weight_decay, schedule, ...).
    Checkpoints hold plain data only (``models.checkpoints`` loads them weights-only): a
    subclass saves its sections with ``save_hyperparameters`` as ``section.model_dump(mode="json")``
    and rebuilds them in :meth:`from_hyperparameters`.
    """

    task_name: str = ""  # the family, recorded in every checkpoint (``models.checkpoints.TASK_KEY``)

    def __init__(self, optim: OptimParams):
        super().__init__()
        self.optim = optim
        self._nonfinite: torch.Tensor | None = None  # on the device: did a loss since the last check fail?
        self._checked_step = 0

    def model_step(self, batch: Any) -> tuple[Any, dict[str, torch.Tensor]]:
        raise NotImplementedError

    @classmethod
    def from_hyperparameters(cls, saved: dict[str, Any]) -> "TaskModule":
        """The module a checkpoint's saved hyperparameters describe (``models.checkpoints``)."""
        raise NotImplementedError

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # Lets predict and evaluate say "a stereo checkpoint, not pose" instead of a KeyError.
        checkpoint[TASK_KEY] = self.task_name

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        _, losses = self.model_step(batch)
        loss = losses["loss"]
        failed = ~torch.isfinite(loss.detach())
        self._nonfinite = failed if self._nonfinite is None else self._nonfinite | failed
        if loss.device.type == "cpu" or self.global_step - self._checked_step >= FINITE_CHECK_EVERY:
            self.check_finite_losses(losses)
        batch_size = len(batch[0]) if isinstance(batch, (list, tuple)) else None
        for name, value in losses.items():
            self.log(f"train/{name}", value.detach(), on_step=False, on_epoch=True, batch_size=batch_size)
        return loss

    def on_train_epoch_end(self) -> None:
        self.check_finite_losses({})

    def check_finite_losses(self, losses: dict[str, torch.Tensor]) -> None:
        """Raise if any loss since the last check was NaN or infinite, showing ``losses``."""
        failed, self._nonfinite, since = self._nonfinite, None, self._checked_step
        self._checked_step = self.global_step
        if failed is None or not bool(failed):
            return
        shown = {k: float(v.detach()) for k, v in losses.items()}
        where = f"step {self.global_step}" if since >= self.global_step - 1 else \
            f"steps {since}-{self.global_step}"
        raise NonFiniteLossError(f"non-finite loss at epoch {self.current_epoch}, {where}: {shown or 'see the log'}; "
                                 f"lower the learning rate ({self.optim.lr}) or check the data")

    def configure_optimizers(self) -> Any:
        optimizer = torch.optim.AdamW(self.parameters(), lr=self.optim.lr,
                                      weight_decay=self.optim.weight_decay)
        schedule = self.optim.schedule
        if schedule == "constant":
            return optimizer
        total_steps = int(self.trainer.estimated_stepping_batches)
        if schedule == "onecycle":
            scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=self.optim.lr,
                                                            total_steps=total_steps)
        else:
            scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=total_steps)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}


def saved_section(model: type[Section], saved: Any, name: str) -> Section:
    """A typed params section rebuilt from a checkpoint's plain ``saved`` hyperparameter ``name``.

    A value that does not fit (an older checkpoint whose family's upgrade function does not
    know a missing key) is a ``ValueError`` naming the key, which ``models.checkpoints`` reports.
    """
    try:
        return model.model_validate(saved)
    except ValidationError as exc:
        raise ValueError(describe_errors(f"hyperparameter {name}", exc, model)) from None
