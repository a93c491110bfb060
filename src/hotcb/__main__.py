import sys

try:
    from .cli import main

    code = main()
except KeyboardInterrupt:  # Ctrl-C while hotcb is imported: no traceback, a shell's 130
    code = 130
sys.exit(code)
