"""`python -m trainer train`: train models on a dataset, a file or the service's database, and publish.

The options are shared with `python -m trainer schedule` (``trainer.commands.options``);
how to read a ``--file`` is ``interactions.file_options``'s.
"""

from __future__ import annotations

import typer

from interactions.file_options import with_column_options, with_scale_options
from trainer.commands.options import TrainOptions, with_train_options


@with_scale_options
@with_column_options
@with_train_options()
def train(options: TrainOptions) -> None:
    """Train models (all by default), evaluate them, and publish a new version atomically."""
    job = options.job()
    from trainer.distributed import context, shutdown

    try:
        report = job.run()
        if context().is_main:  # under torchrun, one summary, not one per rank
            for line in report.summary_lines():
                typer.echo(line)
    finally:
        # Under torchrun, the process group is torn down here, not by the interpreter's exit:
        # left to the exit, a rank once aborted after publishing ("terminate called without an
        # active exception", exit -6) and failed the job.
        shutdown()
