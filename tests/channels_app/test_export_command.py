"""`manage.py export_customer -o FILE` writes the whole export or nothing: a full disk or a path
that cannot be written is a one-line error naming the file and the reason, never a traceback and
never a truncated file of personal data left where the export was expected."""

from __future__ import annotations

import json
import os
import resource
import signal

import pytest
from django.core.management import CommandError, call_command

pytestmark = pytest.mark.django_db


@pytest.fixture
def ada(api, django_capture_on_commit_callbacks):
    """A customer whose export is some 20 kB (an event with a long property)."""
    with django_capture_on_commit_callbacks(execute=True):
        api.post("identify", {"userId": "ada", "traits": {"email": "ada@example.com"}})
        api.post("track", {"userId": "ada", "event": "Noted", "properties": {"note": "n" * 20_000}})


def test_a_disk_that_fills_up_leaves_the_previous_export_and_no_partial_file(ada, tmp_path):
    # given a complete export written earlier
    out = tmp_path / "ada.json"
    call_command("export_customer", "ada", "-o", str(out))
    before = out.read_bytes()
    assert json.loads(before)["customer"]["email"] == "ada@example.com"

    # when the disk fills up after 4 kB of the next one (a file size limit: the kernel refuses more)
    previous = resource.getrlimit(resource.RLIMIT_FSIZE)
    handler = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (4096, previous[1]))
    try:
        with pytest.raises(CommandError) as refused:
            call_command("export_customer", "ada", "-o", str(out))
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, previous)
        signal.signal(signal.SIGXFSZ, handler)

    # then the error names the file and the reason, and nothing truncated is left
    assert str(refused.value) == (f"could not write the export to {out}: File too large; nothing was written "
                                  "(no partial file is left)")
    assert out.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ada.json"]


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full")
def test_a_full_device_is_a_clear_error():
    # given a customer (any)
    from tests.factories import CustomerFactory

    CustomerFactory(external_id="bo")

    # when the export goes to a device that is always full
    with pytest.raises(CommandError) as refused:
        call_command("export_customer", "bo", "-o", "/dev/full")

    # then it says so in one line (the device itself is left alone)
    assert str(refused.value) == "cannot write the export to /dev/full: No space left on device"


def test_a_folder_that_does_not_exist_is_a_clear_error(tmp_path):
    from tests.factories import CustomerFactory

    CustomerFactory(external_id="bo")
    target = tmp_path / "nowhere" / "bo.json"

    with pytest.raises(CommandError) as refused:
        call_command("export_customer", "bo", "-o", str(target))

    assert str(refused.value) == f"cannot write the export to {target}: No such file or directory"
    assert not (tmp_path / "nowhere").exists()
