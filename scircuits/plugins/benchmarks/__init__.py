"""Built-in benchmarks: arithmetic (generated, the default), gsm8k, math, logic (LogiQA)."""

from scircuits import hookimpl
from scircuits.plugins.benchmarks.arithmetic import ArithmeticBenchmark
from scircuits.plugins.benchmarks.competition_math import MathBenchmark
from scircuits.plugins.benchmarks.gsm8k import GSM8KBenchmark
from scircuits.plugins.benchmarks.logiqa import LogiQABenchmark


@hookimpl
def register_benchmarks(register):
    for benchmark in (ArithmeticBenchmark(), GSM8KBenchmark(), MathBenchmark(), LogiQABenchmark()):
        register(benchmark)
