"""Which unit runs each op: the cheapest assignment in program order, the way a cost-based
partitioner makes it. States are units; an op costs its time on the unit, and starting a
new segment costs the unit's dispatch floor plus, after another unit, one switch.

So a graph too small to pay the NE's dispatch floor stays on the CPU (measured: a 2-layer,
128-wide transformer ran 0 of 77 ops on the NE, a 6-layer 384-wide one 217 of 217;
ask-meridian.uk "eligibility is not placement", CPU_AND_NE), and an isolated op the NE
cannot run leaves it only when the detour is cheaper than the switches (hollance/
neural-engine: "ANE <-> CPU switches can repeat").
"""
from __future__ import annotations

from pipeline.device.chips import Chip

INF = float("inf")


def partition(times: list[dict[str, float]], chip: Chip) -> tuple[list[str], float]:
    """times[i][unit] = op i's time on each unit allowed for it. Returns (units, total ms)."""
    if not times:
        return [], 0.0
    enter = {u: chip.switch_ms + chip.dispatch_ms(u) for u in ("NE", "GPU", "CPU")}
    best = {u: chip.dispatch_ms(u) + t for u, t in times[0].items()}
    back: list[dict[str, str]] = []
    for row in times[1:]:
        ranked = sorted(best, key=best.get)     # at most three states
        new, choice = {}, {}
        for u, t in row.items():
            src = ranked[1] if ranked[0] == u and len(ranked) > 1 else ranked[0]
            stay = best.get(u, INF)
            move = best[src] + enter[u] if src != u else INF
            if stay <= move:
                new[u], choice[u] = stay + t, u
            else:
                new[u], choice[u] = move + t, src
        back.append(choice)
        best = new
    last = min(best, key=best.get)
    total = best[last]
    units = [last]
    for choice in reversed(back):
        units.append(choice[units[-1]])
    return units[::-1], total
