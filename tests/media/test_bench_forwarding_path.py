"""scripts/bench_forwarding_path.py still drives the real forwarding path.

It reaches into a transport (SRTP keyed by hand, sends counted): a refactor of
``WebRtcTransport`` could leave it measuring nothing.  It raises when fewer
packets are forwarded than its consumers should forward.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "bench_forwarding_path.py"


def run_small(*args: str) -> str:
    """The script's output on small batches (it exits non-zero if it forwarded too little)."""
    small = ["--batch", "2000", "--batches", "2", "--rounds", "1"]
    result = subprocess.run(
        [sys.executable, str(SCRIPT), *small, *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_the_in_process_benchmark_forwards_both_kinds_of_producer_and_prints_their_ratio() -> None:
    output = run_small("--fanout", "1,2")

    rows = [line.split() for line in output.splitlines() if line.startswith("1->")]
    assert [row[0] for row in rows] == ["1->1", "1->2"]
    for row in rows:
        single, simulcast, ratio = float(row[1]), float(row[2]), float(row[4].rstrip("x"))
        assert single > 0 and simulcast > 0 and abs(ratio - simulcast / single) < 0.02


def test_it_times_a_forwarded_packet_and_one_nobody_takes_apart() -> None:
    output = run_small("--fanout", "1", "--apart")

    [line] = [line for line in output.splitlines() if line.startswith("1->1 ")]
    forwarded, untaken = (float(word) for word in line.split() if word[0].isdigit() and "." in word)
    assert forwarded > untaken > 0  # a packet nobody takes is not prepared for sending
