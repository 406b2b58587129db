"""The command line behaves as command lines do: -h, help and defaults on every option, and
per-run overrides of the study file without editing it."""

from __future__ import annotations

import click
import pytest
from click.testing import CliRunner
from conftest import cli, study_dict, trials_of, write_study

from hpsearch.cli import main
from hpsearch.config import ConfigError, parse_study


def _commands() -> list[tuple[str, click.Command]]:
    return [("hpsearch", main), *sorted(main.commands.items())]


@pytest.mark.parametrize("name", [None, *sorted(main.commands)])
def test_h_is_help_on_the_group_and_every_command(name):
    args = [name, "-h"] if name else ["-h"]
    r = CliRunner().invoke(main, args)
    assert r.exit_code == 0, r.output
    assert r.stdout.startswith("Usage: ") and "-h, --help" in r.stdout


def test_every_option_has_help_and_shows_its_default():
    for name, cmd in _commands():
        ctx = click.Context(cmd, info_name=name)
        for p in cmd.params:
            if not isinstance(p, click.Option):
                continue
            assert p.help and p.help.strip(), f"{name} {p.opts[0]}: no help"
            default = p.get_default(ctx, call=False)
            if isinstance(default, (int, float, str)) and not isinstance(default, bool):
                assert "[default: " in p.get_help_record(ctx)[1], f"{name} {p.opts[0]}"


def test_resume_says_it_is_the_same_as_run():
    r = CliRunner().invoke(main, ["resume", "--help"])
    assert r.exit_code == 0
    assert "the same as run" in " ".join(r.stdout.split()).lower()
    run, resume = main.commands["run"], main.commands["resume"]
    assert resume.callback is run.callback and resume.params == run.params
    assert resume.help != run.help


@pytest.mark.parametrize("command", ["run", "worker"])
def test_n_trials_below_one_is_refused_before_anything_is_written(tmp_path, command):
    path = write_study(tmp_path, "demo")
    r = CliRunner().invoke(main, [command, str(path), "--n-trials", "0"])
    assert r.exit_code == 2
    assert "Invalid value for '--n-trials'" in r.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["study.yaml"]


@pytest.mark.parametrize("command", ["run", "resume", "worker"])
def test_n_trials_replaces_the_files_total_for_this_run(tmp_path, monkeypatch, command):
    import hpsearch.study
    import hpsearch.workers

    seen = []

    class Started(Exception):
        pass

    def start(cfg, *a, **kw):
        seen.append(cfg)
        raise Started

    monkeypatch.setattr(hpsearch.study, "run", start)
    monkeypatch.setattr(hpsearch.workers, "run_pool", start)
    path = write_study(tmp_path, "demo")  # n_trials: 2
    r = CliRunner().invoke(main, [command, str(path), "--n-trials", "5", "--fuse", "2"])
    assert isinstance(r.exception, Started), r.output
    assert [(c.n_trials, c.trainer.fuse) for c in seen] == [(5, 2)]
    assert r.stdout.startswith("study t: 5 trials, ")


def test_overrides_are_checked_like_the_file(tmp_path):
    from hpsearch.config import with_fuse, with_overrides

    cfg = parse_study(study_dict(tmp_path, "demo"), "s.yaml")
    assert with_overrides(cfg, "s.yaml") is cfg
    both = with_overrides(cfg, "s.yaml", n_trials=7, fuse=4)
    assert (both.n_trials, both.trainer.fuse, cfg.n_trials) == (7, 4, 2)
    assert with_fuse(cfg, 3, "s.yaml").trainer.fuse == 3
    with pytest.raises(ConfigError, match=r"^s\.yaml: --n-trials 0: n_trials: Input should be "
                                          r"greater than or equal to 1$"):
        with_overrides(cfg, "s.yaml", n_trials=0)
    space = {"max_tokens": {"type": "categorical", "choices": [512, 1024]}}
    shapes = parse_study(study_dict(tmp_path, "demo", search_space=space), "s.yaml")
    with pytest.raises(ConfigError, match=r"^s\.yaml: --fuse 2: search_space\.max_tokens: "):
        with_fuse(shapes, 2, "s.yaml")


@pytest.mark.slow
def test_run_n_trials_1_runs_one_trial_of_a_two_trial_study(tmp_path, demo_dir):
    path = write_study(tmp_path, demo_dir)  # n_trials: 2
    r = cli("run", str(path), "--n-trials", "1")
    assert r.exit_code == 0, r.stderr
    assert "1/1 trials" in r.stdout
    assert len(trials_of(path)) == 1


def test_a_dashboard_beyond_this_machine_is_warned_about(tmp_path, monkeypatch):
    import hpsearch.dashboard

    served = []
    monkeypatch.setattr(hpsearch.dashboard, "serve_dashboard",
                        lambda cfg, host, port: served.append((host, port)))
    path = write_study(tmp_path, "demo")
    warned = {}
    for host in ["0.0.0.0", "10.1.2.3", "127.0.0.1", "localhost"]:
        r = CliRunner().invoke(main, ["dashboard", str(path), "--host", host])
        assert r.exit_code == 0, r.output
        warned[host] = r.stderr.splitlines()
    assert served == [(h, 8080) for h in warned]
    assert warned == {
        **{h: [f"warning: --host {h}: the dashboard has no login; anyone who can reach "
               f"{h}:8080 can read, change and delete the study"] for h in ["0.0.0.0", "10.1.2.3"]},
        "127.0.0.1": [], "localhost": [],
    }
