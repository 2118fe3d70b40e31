"""A Python that has imported torch, numpy, torch._dynamo, tiktoken's GPT-2 BPE and matplotlib once, and runs each
script the tests ask for in a fork of itself: the script as `python script.py args` runs it (its own process,
arguments, folder, environment, exit code, output, and the interpreter's own handling of its exit and any traceback),
without the ~5 s of imports that each of the suite's few hundred runs would otherwise spend. What those modules read
from the environment as they are imported is the tests': conftest.READ_AT_START sends a run whose env sets it to a
plain subprocess. conftest.run_script talks to it: one JSON request a line on stdin, [script, args, cwd, env, stdout
file, stderr file]; it answers with the child's pid, then its exit code (negative: the signal that ended it). Nothing
here runs torch code: a fork after OpenMP has started its threads would inherit them dead."""

import contextlib
import gc
import json
import os
import runpy
import sys

import numpy  # noqa: F401
import torch
import torch._dynamo  # noqa: F401  what every training run imports on its way (with sympy): ~1 s

# GPT-2's BPE, which every run reads (its val split's bytes, for bits per byte): 0.8 s to load. Without its files and
# a network each run says so itself
with contextlib.suppress(Exception):
    import tiktoken

    tiktoken.get_encoding("gpt2")

try:  # plot.png after each evaluation: matplotlib is optional
    import matplotlib

    matplotlib.use("Agg")  # as plot.py sets it
    import matplotlib.pyplot
except ImportError:
    pass

# the imports' objects live for good: out of the collector's way, the child's exit no longer walks them all (0.7 s)
gc.freeze()

for request in sys.stdin:
    script, args, cwd, env, stdout, stderr = json.loads(request)
    pid = os.fork()
    if pid == 0:
        break
    print(pid, flush=True)
    print(os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]), flush=True)
else:
    sys.exit()  # the tests' process has ended

WRITE = os.O_WRONLY | os.O_CREAT | os.O_TRUNC

# the child, at the module's top level, so that the interpreter ends it as it would end `python script.py`
os.chdir(cwd)
os.environ.clear()
os.environ.update(env)
for fd, path, flags in ((0, os.devnull, os.O_RDONLY), (1, stdout, WRITE), (2, stderr, WRITE)):
    os.dup2(os.open(path, flags), fd)
sys.argv, sys.path[0] = [script, *args], os.path.dirname(script)
runpy.run_path(script, run_name="__main__")
