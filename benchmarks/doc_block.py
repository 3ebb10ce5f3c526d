"""The benchmarks' generated paragraphs in docs/benchmark.md: each lives between ``<!-- name:begin -->`` and
``<!-- name:end -->`` and is replaced whole by the script that measured it, never edited by hand."""

from __future__ import annotations

import re

# where a block that is not in the document yet goes: after the first of these that is (the engine section's
# blocks in order: the bf16 machine's table, its gate, the table of a CPU without bf16)
ENGINE_ANCHORS = ("<!-- bf16-gate:end -->", "<!-- engines:end -->")


def with_block(doc: str, name: str, text: str) -> str:
    """``doc`` with its block ``name`` replaced by ``text``; a new block goes after the engine section's last block
    (or at the end, under the section heading)."""
    begin, end = f"<!-- {name}:begin -->", f"<!-- {name}:end -->"
    block = f"{begin}\n{text}\n{end}"
    if begin in doc:
        return re.sub(re.escape(begin) + r".*?" + re.escape(end), lambda _: block, doc, flags=re.S)
    anchors = [a for a in ENGINE_ANCHORS if a in doc and a != end]
    if anchors:
        return doc.replace(anchors[0], anchors[0] + "\n\n" + block, 1)
    return doc.rstrip("\n") + "\n\n## Engines and precision (issue 23)\n\n" + block + "\n"
