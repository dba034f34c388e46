#!/bin/sh
# cpu_busy.sh COMMAND...: run COMMAND, then print how busy the whole machine's CPUs were
# meanwhile (the share of non-idle time in /proc/stat, all CPUs together). Tells whether
# a workload is bound by CPU (near 100%) or by something else, e.g.:
#   sh benchmarks/cpu_busy.sh .venv/bin/python benchmarks/runner_cost.py --workload sleep -n 3000 -r 1 --methods engine
set -eu
read -r _ user nice system idle iowait irq softirq steal _ < /proc/stat
total0=$((user + nice + system + idle + iowait + irq + softirq + steal))
idle0=$((idle + iowait))
"$@"
read -r _ user nice system idle iowait irq softirq steal _ < /proc/stat
total1=$((user + nice + system + idle + iowait + irq + softirq + steal))
idle1=$((idle + iowait))
echo "cpu busy: $((100 - 100 * (idle1 - idle0) / (total1 - total0)))%"
