"""`python -m tsa`: the same app as the `tsa` console script."""
from tsa.cli import main

main()
