"""The end of a run, for people: a few lines from its result, printed before the JSON line."""

from __future__ import annotations

from typing import Any


def summary_lines(result: dict[str, Any]) -> list[str]:
    """What a run did, in a few lines: task and method, the final top-1 and the best
    epoch, time, trainable parameters, rank and its moves, health warnings, outputs."""
    lines = [
        f"{result['task']} / {result['method']} (seed {result['seed']}): "
        f"top-1 {result['accuracy']:.2f}% on {result['eval_split']}{_best(result)}",
        f"  {result.get('epochs', '?')} epochs, {result.get('steps', '?')} steps in {_duration(result.get('wall_time_s'))}"
        f"{_data_wait(result)}; {result['trainable_params']:,} trainable parameters",
    ]
    if result.get("total_rank") is not None:
        lines.append("  " + _rank_line(result))
    warnings = (result.get("health") or {}).get("warnings") or []
    lines += [f"  warning: {w}" for w in warnings] or ["  health: no warnings"]
    lines.append(f"  outputs in {result['output_dir']}")
    return lines


def _data_wait(result: dict[str, Any]) -> str:
    share = result.get("data_wait_share")
    return "" if share is None else f" (getting batches: {100 * share:.1f}% of the steps' time)"


def _best(result: dict[str, Any]) -> str:
    best = result.get("best_epoch")
    if best is None or best == result.get("epochs"):
        return " (the best evaluation was the final one)" if best is not None else ""
    return f" (best evaluation at epoch {best})"


def _rank_line(result: dict[str, Any]) -> str:
    line = f"total rank {result['total_rank']}"
    rounds = result.get("rounds") or 0
    if not rounds:
        return line + ", fixed (no allocation rounds)"
    net, gross = result.get("ranks_moved", 0), result.get("ranks_moved_gross", 0)
    moved = f"{net} ranks moved in {rounds} rounds"
    if gross != net:
        moved += f" ({gross} counting the {gross - net} pruned and re-grown in the same adapter and round)"
    return f"{line}; {moved}"


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "?"
    minutes, secs = divmod(int(round(seconds)), 60)
    hours, minutes = divmod(minutes, 60)
    if hours:
        return f"{hours} h {minutes:02d} min"
    return f"{minutes} min {secs:02d} s" if minutes else f"{secs} s"
