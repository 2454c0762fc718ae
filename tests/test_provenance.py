"""Where a result came from: the git state of synthaug's own checkout, CPU flags, invocation records."""

from __future__ import annotations

import subprocess

from synthaug.provenance import cpu_flags, git_state, invocation_record


def git(cwd, *args):
    subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True)


def test_git_state_names_the_checkout_commit_and_a_dirty_tree(tmp_path):
    repo = tmp_path / "repo"
    (repo / "synthaug").mkdir(parents=True)
    (repo / "synthaug" / "x.py").write_text("a = 1\n")
    git(repo, "init", "-q")
    git(repo, "add", "-A")
    git(repo, "-c", "user.email=t@t", "-c", "user.name=t", "commit", "-qm", "x")
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=repo, capture_output=True, text=True).stdout.strip()
    assert git_state(repo / "synthaug") == {"commit": head, "dirty": False}
    (repo / "synthaug" / "x.py").write_text("a = 2\n")
    assert git_state(repo / "synthaug") == {"commit": head, "dirty": True}


def test_a_package_installed_inside_another_repository_has_no_commit(tmp_path):
    """A wheel installed into a virtual environment that lives in a user's own repository is not that repository's
    code: recording the user's commit would be wrong."""
    repo = tmp_path / "userproject"
    package = repo / ".venv" / "lib" / "site-packages" / "synthaug"
    package.mkdir(parents=True)
    (repo / "train.py").write_text("print('mine')\n")
    git(repo, "init", "-q")
    git(repo, "add", "train.py")
    git(repo, "-c", "user.email=t@t", "-c", "user.name=t", "commit", "-qm", "the user's code")
    assert git_state(package) == {"commit": None, "dirty": None}
    assert git_state(tmp_path) == {"commit": None, "dirty": None}  # no repository at all


def test_an_invocation_record_has_what_a_report_needs():
    record = invocation_record({"name": "digits"}, "synthaug benchmark")
    assert {"id", "synthaug", "commit", "dirty", "date", "recipe_sha256", "command"} <= set(record)
    assert record["recipe_sha256"] == invocation_record({"name": "digits"}, "x")["recipe_sha256"] != \
        invocation_record({"name": "other"}, "x")["recipe_sha256"]
    assert isinstance(cpu_flags(), list)
