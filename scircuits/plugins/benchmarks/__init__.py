"""Built-in benchmarks: arithmetic (generated, the default), gsm8k, math, logic (LogiQA)."""

from scircuits import hookimpl

from .arithmetic import ArithmeticBenchmark
from .competition_math import MathBenchmark
from .gsm8k import GSM8KBenchmark
from .logiqa import LogiQABenchmark


@hookimpl
def register_benchmarks(register):
    for benchmark in (ArithmeticBenchmark(), GSM8KBenchmark(), MathBenchmark(), LogiQABenchmark()):
        register(benchmark)
