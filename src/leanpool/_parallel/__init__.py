"""``leanpool parallel``: GNU parallel's way of writing a job, run by leanpool's runner.

Rooms: ``syntax`` (the command line), ``inputs`` (sources, products, -0), ``template``
(replacement strings and quoting), ``main`` (feeding, printing, exit status).
"""

from .main import main as main

__all__ = ["main"]
