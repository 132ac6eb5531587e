"""README.md is a program: its bash blocks run in order, from a fresh copy of the checkout, and none fails."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.readme_runner import NOT_RUN, BlockFailed, bash_blocks, fresh_checkout, run_block

REPO = Path(__file__).resolve().parents[1]
BLOCKS = bash_blocks((REPO / "README.md").read_text(encoding="utf-8"))
RUN = [block for block in BLOCKS if block.runs]


@pytest.fixture(scope="module")
def checkout(tmp_path_factory):
    """A fresh copy of the checkout, shared by the blocks in order, and the name of the first block that failed."""
    return {"folder": fresh_checkout(REPO, tmp_path_factory.mktemp("clone")), "failed": None}


@pytest.mark.parametrize("block", RUN, ids=[f"line{block.line}" for block in RUN])
def test_readme_block_runs(block, checkout):
    if checkout["failed"]:
        pytest.skip(f"an earlier block failed: {checkout['failed']}")
    try:
        run_block(block, checkout["folder"])
    except BaseException:
        checkout["failed"] = block.name
        raise


def test_only_the_set_up_blocks_are_not_run():
    skipped = [block for block in BLOCKS if not block.runs]
    assert [block.section for block in skipped] == ["Install", "Test"], [block.name for block in skipped]
    assert len(RUN) >= 10


def test_a_failing_block_is_named_with_its_line_and_section(tmp_path):
    markdown = f"# Guide\n\n## Set-up\n\n{NOT_RUN}\n```bash\nexit 3\n```\n\n## Use\n\n```bash\necho fine\n```\n\n```bash\ntrue\nfalse\necho never\n```\n"
    blocks = bash_blocks(markdown)
    assert [(block.line, block.section, block.runs) for block in blocks] == [(6, "Set-up", False), (12, "Use", True), (16, "Use", True)]
    assert run_block(blocks[1], tmp_path).stdout == "fine\n"
    with pytest.raises(BlockFailed, match=r"README.md line 16 \(Use\) exited 1") as failed:
        run_block(blocks[2], tmp_path)
    assert "never" not in str(failed.value).split("--- output ---")[1]
