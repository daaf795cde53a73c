"""`python -m skipprune ...`, as launchers run it: `torchrun --nproc-per-node N -m skipprune heal ...`."""

from _skipprune_entry import main

if __name__ == "__main__":
    main()
