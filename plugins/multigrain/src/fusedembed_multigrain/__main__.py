from fusedembed.errors import run_command

from .tools import main

run_command(main, "python -m fusedembed_multigrain")
