"""Every test prices CPU runs with the development VM's measured profile (parsim/data/measured/vm-2core:
the `cpu` device and the `cpu-local` loopback link), named here explicitly: the stored measurements and the
hand-derived figures were made with it, and a user's own calibration (~/.local/share/parsim) must not
change what the tests see. Subprocesses inherit it (and no COLUMNS: text output at the pipe width, 120)."""
import os

from parsim.calibrate import DEV_VM

os.environ["PARSIM_HOME"] = str(DEV_VM)
os.environ.pop("PARSIM_DEVICES_LOCAL", None)
os.environ.pop("XDG_DATA_HOME", None)
# Text output is as wide as COLUMNS says (parsim.tables.terminal_width); tests see the width of a pipe (120)
# whatever the shell that runs them exports. Tests of COLUMNS set it themselves.
os.environ.pop("COLUMNS", None)
