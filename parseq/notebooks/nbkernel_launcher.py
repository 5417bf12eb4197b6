"""What Parseq runs in the parser's interpreter for a notebook with the kernel engine:
``python nbkernel_launcher.py NOTEBOOK OUTPUT_IPYNB [--key value ...]`` (see
:mod:`parseq.notebooks.nbkernel`, found beside this file: this folder is ``sys.path[0]``)."""

import sys

import nbkernel

sys.exit(nbkernel.main(sys.argv[1:]))
