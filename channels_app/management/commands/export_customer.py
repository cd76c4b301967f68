"""Data-subject access request: everything held about a customer, as JSON."""

import os
import stat
import tempfile
from pathlib import Path

from django.core.management import BaseCommand, CommandError

from channels_app.management.commands._customer import find_customer
from channels_app.services.privacy import customer_export_write


class Command(BaseCommand):
    help = "Export everything held about a customer as JSON (user id, email or customer number)."

    def add_arguments(self, parser):
        parser.add_argument("customer")
        parser.add_argument("--output", "-o", help="file to write (default: standard output)")

    def handle(self, *args, customer, output=None, **options):
        """Written while it is read, a page of rows at a time (a customer with years of events
        would not fit in memory as one document), the same JSON the console's download gives."""
        customer = find_customer(customer, note=self.stderr.write)
        if output:
            export_to_file(customer=customer, path=Path(output))
            self.stdout.write(f"written to {output}")
        else:
            customer_export_write(customer=customer, write=lambda piece: self.stdout.write(piece, ending=""))
            self.stdout.write("")


def export_to_file(*, customer, path: Path) -> None:
    """Write the export to `path` whole or not at all: into a temporary file beside it (readable by
    its owner only: it holds personal data), renamed over `path` once complete. A full disk or a
    path that cannot be written is a CommandError naming the file and the reason, and leaves no
    partial export behind (an operator could otherwise send a truncated one). A `path` that is
    not a regular file (a device, a pipe) is written to directly."""
    try:
        if path.exists() and not stat.S_ISREG(path.stat().st_mode):
            if path.is_dir():
                raise CommandError(f"cannot write the export to {path}: it is a directory")
            with path.open("w", encoding="utf-8") as f:
                customer_export_write(customer=customer, write=f.write)
            return
        if path.exists() and not os.access(path, os.W_OK):
            raise CommandError(f"cannot write the export to {path}: the file is read-only")
        fd, temp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".part", dir=path.parent)
    except OSError as exc:
        raise CommandError(f"cannot write the export to {path}: {exc.strerror or exc}") from None
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            customer_export_write(customer=customer, write=f.write)
            f.flush()
            os.fsync(f.fileno())
        os.replace(temp, path)
        return
    except BaseException as exc:
        try:
            os.unlink(temp)
        except OSError:
            pass
        if not isinstance(exc, OSError):
            raise
        reason = exc.strerror or str(exc)
    # Raised once the OSError (and with it the export's frames) is gone: the export's open database
    # cursor is closed now, inside the caller's transaction, not whenever the frames are collected.
    raise CommandError(f"could not write the export to {path}: {reason}; nothing was written "
                       "(no partial file is left)")
