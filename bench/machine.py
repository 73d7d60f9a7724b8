"""What the benchmarks print about the machine they ran on (imports nothing heavy)."""

import platform
import re
from pathlib import Path


def cpu_name():
    """The CPU's model name and its widest vector extensions, which the ratios depend on (from Linux's
    /proc/cpuinfo; elsewhere just the architecture)."""
    info = Path("/proc/cpuinfo")
    text = info.read_text() if info.exists() else ""
    name = re.search(r"^model name\s*:\s*(.+)$", text, re.M)
    flags = re.search(r"^flags\s*:\s*(.+)$", text, re.M)
    flags = set(flags.group(1).split()) if flags else set()
    vector = [label for flag, label in (("avx512f", "AVX-512"), ("avx512_vnni", "VNNI"), ("amx_tile", "AMX"))
              if flag in flags]
    if not vector and "avx2" in flags:
        vector = ["AVX2"]
    return (name.group(1) if name else platform.machine()) + (f" ({', '.join(vector)})" if vector else "")
