"""What the benchmarks print about the machine they ran on: its CPU model and the load beside each timing."""

import os
import platform


def cpu_name() -> str:
    """The CPU model (`model name` of /proc/cpuinfo, else what `platform` knows): results from different machines
    are not comparable, and the machines this project is measured on change between sessions."""
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def load() -> str:
    """The 1-minute load average, printed beside each timing."""
    return f"{os.getloadavg()[0]:.1f}"
