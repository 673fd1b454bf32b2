"""`python -m l2l_app ARGS` is `l2l-app ARGS`; it is the form torchrun launches:

    torchrun --standalone --nproc_per_node N -m l2l_app train ...

(`l2l_app.distributed` reads torchrun's environment; see the README's "Scaling out").
"""
from .cli import main

if __name__ == "__main__":
    main()
