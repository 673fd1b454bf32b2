"""`l2l-app ARGS` and `python -m l2l_app ARGS` (the form torchrun launches:

    torchrun --standalone --nproc_per_node N -m l2l_app train ...

`l2l_app.distributed` reads torchrun's environment; see the README's "Scaling out").

The command line itself is `l2l_app.cli`; it is imported here, inside `main`, so that a Ctrl-C
while torch is still importing ends in the same one line as one later on.
"""
import sys


def main() -> None:
    try:
        from .cli import main as run_cli
    except KeyboardInterrupt:
        sys.stderr.write("error: interrupted\n")
        sys.exit(130)
    run_cli()


if __name__ == "__main__":
    main()
