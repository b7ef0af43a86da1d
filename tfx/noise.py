"""What libraries print that a tfx user should not see: adverts, deprecation notices, chatty INFO
logs, and h5py's notes while it unwinds a write that failed (tfx reports the failure in one line).
`tfx -v` keeps all of it."""

from __future__ import annotations

import logging
import sys
import traceback
import warnings


def quiet_third_parties() -> None:
    for name in ("lightning.pytorch.utilities.rank_zero", "lightning.fabric.utilities.rank_zero"):
        logging.getLogger(name).addFilter(lambda record: "💡 Tip" not in str(record.msg))
    for name in ("botocore", "aiobotocore", "s3fs", "fsspec", "urllib3"):  # object-store clients: chatty at INFO
        logging.getLogger(name).setLevel(logging.WARNING)
    for category in (DeprecationWarning, FutureWarning):
        warnings.filterwarnings("ignore", category=category, module=r"(lightning|pytorch_lightning|torch|deepspeed)\b")
    logging.getLogger("anndata").setLevel(logging.WARNING)  # "... storing 'x' as categorical" on every write
    warnings.filterwarnings("ignore", message=r"Checkpoint directory .* exists and is not empty")  # every resume
    sys.unraisablehook = _without_h5py_unwinding(sys.unraisablehook)
    sys.excepthook = _without_h5py_unwinding(sys.excepthook)  # Cython prints its destructors' errors here too


def _without_h5py_unwinding(hook):
    """``hook`` (sys.excepthook or sys.unraisablehook), silent for the errors h5py's object destructors
    raise again, one per object, after a write failed (a full disk)."""
    if getattr(hook, "quiet", False):  # main() runs many times in one process (tests, notebooks)
        return hook

    def quiet(*args):
        tb = args[2] if len(args) == 3 else args[0].exc_traceback
        if not any(frame.name == "h5py._objects.ObjectID._dealloc" for frame in traceback.extract_tb(tb)):
            hook(*args)

    quiet.quiet = True
    return quiet
