"""What Parseq runs in the parser's interpreter for a notebook: ``python nbexec_launcher.py
NOTEBOOK OUTPUT_IPYNB [--key value ...]``.

A file run as a script is compiled at every start; a module it imports loads from cached
bytecode. So this stays tiny and imports the executor, found beside it
(this folder is ``sys.path[0]`` when the file runs; the executor takes it off again).
"""

import sys

import nbexec

sys.exit(nbexec.main(sys.argv[1:]))
