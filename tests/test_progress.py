"""Progress lines: what a log shows of a long loop, including one an error or Ctrl-C ended."""

from __future__ import annotations

import io

import pytest

from synthaug import progress


def test_plain_lines_say_started_and_done():
    stream = io.StringIO()
    with progress.lines(stream), progress.task("generating 20 images", total=20) as bar:
        bar.advance(20)
    lines = stream.getvalue().splitlines()
    assert lines[0] == "generating 20 images: started" and lines[-1].startswith("generating 20 images: done, 20/20 (100%)")


def test_an_interrupted_loop_says_where_it_stopped_not_done():
    stream = io.StringIO()
    with progress.lines(stream), pytest.raises(KeyboardInterrupt):
        with progress.task("generating 200 images", total=200) as bar:
            bar.advance(16)
            raise KeyboardInterrupt
    last = stream.getvalue().splitlines()[-1]
    assert last.startswith("generating 200 images: stopped at 16/200 (8%)") and "done" not in last
