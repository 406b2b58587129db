"""`hpsearch` on the command line: a thin layer over the library a notebook can call too.

One module per kind of command: ``running`` (run, resume, worker, train, enqueue), ``views``
(status, best, evaluate, plot, dashboard, tensorboard, demo-data) and ``cluster`` (submit,
cancel); ``common`` turns expected errors into one line and an exit code.
"""

from __future__ import annotations

import click

from hpsearch.cli import cluster, running, views

#: `-h` as well as `--help`, on the group and, inherited, on every command.
CONTEXT = {"help_option_names": ["-h", "--help"]}


@click.group(context_settings=CONTEXT)
@click.version_option(package_name="hpsearch")
def main() -> None:
    """Hyperparameter search for token-classification (NER) trainers."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)


for _command in (running.run, running.resume, running.worker, running.train, running.enqueue,
                 views.status, views.best, views.evaluate, views.plot, views.dashboard,
                 views.tensorboard_cmd, views.demo_data, cluster.submit, cluster.cancel):
    main.add_command(_command)


if __name__ == "__main__":
    main()
