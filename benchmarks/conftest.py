import os
import sys

sys.path.insert(0, os.path.dirname(__file__))


def pytest_terminal_summary(terminalreporter, config):
    """Each group's medians as ratios to the fused kernel's, the number the benchmarks are for."""
    session = getattr(config, "_benchmarksession", None)
    benchmarks = getattr(session, "benchmarks", None) or []
    groups = {}
    for bench in benchmarks:
        if not bench.stats.data:  # a benchmark that failed has no timings
            continue
        groups.setdefault(bench.group, {})[bench.name] = bench.stats.median
    if not groups:
        return
    terminalreporter.section("median time / fused kernel's median (same run)")
    for group, medians in sorted(groups.items()):
        by_implementation = {name.rstrip("]").split("-")[-1]: t for name, t in medians.items()}
        fused = by_implementation.get("fused")
        if fused is None:
            continue
        cells = ", ".join(f"{implementation} {t * 1e3:.1f} ms ({t / fused:.1f}x)"
                          for implementation, t in sorted(by_implementation.items(), key=lambda item: item[1]))
        terminalreporter.write_line(f"{group}: {cells}")
