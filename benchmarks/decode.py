"""Decode throughput: the box's decode pipeline against a bare cantools loop, same run.

For each real capture (the Subaru drive and the Tesla sweep, from ``tests/data/``), the
frames are read into memory first, then timed, best of ``--repeat`` runs:

* pipeline: ``CompiledDecoder.feed`` with the shipped mapping (``can_dbc/networks/*.yaml``)
  over the frames whose id the DBC knows;
* baseline: ``db.decode_message(frame_id, data)`` over the same frames (it raises on the
  others), i.e. cantools decoding every signal of every frame;
* the pipeline over the same frames with the unchanged-bytes skip turned off (the compiled
  index alone), and over every frame of the capture (unknown ids, error and remote frames
  included: more frames than the baseline decodes, so not like for like).

The headline ``ratio`` is pipeline frames/s over baseline frames/s on the same frames. The
pipeline wins by doing less: it skips frames whose bytes did not change and decodes only the
mapped signals (and only the frames that carry one); ``ratio_known_no_skip`` shows what the
skip gives. ``ratio_all_frames`` divides the every-frame rate by the same baseline. Run
``python benchmarks/decode.py``; the last line is JSON and is also written to
``benchmarks/results/decode.json``.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import can
import cantools

from can_dbc.capture import read_capture
from can_dbc.decoder import CompiledDecoder
from can_dbc.mapping import load_mapping
from can_dbc.network import NETWORKS_DIR

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / "tests" / "data"
RESULTS = Path(__file__).resolve().parent / "results" / "decode.json"

CAPTURES = {
    "subaru": ("subaru_can_sample.log", "subaru_sample_can_spec.dbc", "subaru.yaml"),
    "tesla": (
        "tesla_candump_Manual_SOC_DogMode_CabinTemp.log",
        "tesla_Model3CAN.dbc",
        "tesla_model3.yaml",
    ),
}


def _best(run: Callable[[], None], repeat: int) -> float:
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        run()
        best = min(best, time.perf_counter() - start)
    return best


def _pipeline(decoder: CompiledDecoder, frames: Sequence[can.Message]) -> Callable[[], None]:
    def run() -> None:
        decoder.reset()
        feed = decoder.feed
        for msg in frames:
            feed(msg)

    return run


def measure(name: str, repeat: int) -> dict[str, Any]:
    """The figures for one capture."""
    log, dbc, mapping_file = CAPTURES[name]
    frames, _stats = read_capture(DATA / log)
    mapping = load_mapping(NETWORKS_DIR / mapping_file, network_paths=[DATA / dbc])
    database = mapping.database
    known_ids = {(m.frame_id, bool(m.is_extended_frame)) for m in database.messages}
    known = [
        msg
        for msg in frames
        if not msg.is_error_frame
        and not msg.is_remote_frame
        and (msg.arbitration_id, msg.is_extended_id) in known_ids
    ]
    pairs = [(msg.arbitration_id, bytes(msg.data)) for msg in known]

    decoder = CompiledDecoder.for_mapping(mapping)
    pipeline_all = len(frames) / _best(_pipeline(decoder, frames), repeat)
    pipeline_known = len(known) / _best(_pipeline(decoder, known), repeat)
    stats = decoder.stats
    no_skip = CompiledDecoder.for_mapping(mapping, skip_unchanged=False)
    pipeline_no_skip = len(known) / _best(_pipeline(no_skip, known), repeat)

    decode_message = database.decode_message

    def baseline_run() -> None:
        for frame_id, data in pairs:
            decode_message(frame_id, data)

    baseline = len(pairs) / _best(baseline_run, repeat)
    return {
        "frames": len(frames),
        "known_frames": len(known),
        "mapped_signals": len(mapping.signals),
        "unchanged_skipped": stats.unchanged,
        "pipeline_known_fps": round(pipeline_known),
        "cantools_decode_message_fps": round(baseline),
        "ratio": round(pipeline_known / baseline, 2),
        "pipeline_known_no_skip_fps": round(pipeline_no_skip),
        "ratio_known_no_skip": round(pipeline_no_skip / baseline, 2),
        "pipeline_all_frames_fps": round(pipeline_all),
        "ratio_all_frames": round(pipeline_all / baseline, 2),
    }


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark; print each figure and a closing JSON line."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=7, help="runs per figure (best is kept)")
    args = parser.parse_args(argv)
    results: dict[str, Any] = {}
    for name in CAPTURES:
        figures = measure(name, args.repeat)
        results[name] = figures
        print(
            f"{name}: {figures['frames']} frames ({figures['known_frames']} of ids the DBC "
            f"knows, {figures['unchanged_skipped']} of those skipped as unchanged)"
        )
        print(
            f"  pipeline, known ids:                {figures['pipeline_known_fps']:>10,} frames/s"
        )
        print(
            f"  cantools decode_message, known ids: "
            f"{figures['cantools_decode_message_fps']:>10,} frames/s"
        )
        print(
            f"  pipeline, known ids, no skip:       "
            f"{figures['pipeline_known_no_skip_fps']:>10,} frames/s"
        )
        print(
            f"  pipeline, every frame:              "
            f"{figures['pipeline_all_frames_fps']:>10,} frames/s"
        )
        print(
            f"  ratio {figures['ratio']} (same frames; without the skip: "
            f"{figures['ratio_known_no_skip']}; every frame against the known-id baseline: "
            f"{figures['ratio_all_frames']})"
        )
    summary = {
        "benchmark": "decode",
        "repeat": args.repeat,
        "python": platform.python_version(),
        "cantools": cantools.__version__,
        "python_can": can.__version__,
        **results,
        "ratio_min": min(r["ratio"] for r in results.values()),
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
