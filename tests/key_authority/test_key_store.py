import stat

import pytest

from services.common.errors import CkksParameterError
from services.common.secure_sum.ckks_params import load_public_context
from services.key_authority.key_store import AGREEMENT_FILE, SECRET_FILE, load_or_create_keys


def test_secret_key_is_persisted_only_on_request_with_mode_0600_and_reloads(tmp_path) -> None:  # type: ignore[no-untyped-def]
    ephemeral = load_or_create_keys(8, None, tmp_path / "a", persist=False)
    assert not (tmp_path / "a").exists()
    first = load_or_create_keys(8, None, tmp_path / "b", persist=True)
    path = tmp_path / "b" / SECRET_FILE
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    again = load_or_create_keys(8, None, tmp_path / "b", persist=True)
    assert again.key_id == first.key_id != ephemeral.key_id
    assert again.secret_context.is_private()
    # Its mask-agreement key is kept beside it, as private, and published with the public context.
    assert stat.S_IMODE((tmp_path / "b" / AGREEMENT_FILE).stat().st_mode) == 0o600
    assert again.public_info(3).mask_agreement_key == first.public_info(3).mask_agreement_key != \
        ephemeral.public_info(3).mask_agreement_key
    assert not load_public_context(first.public_context).is_private()


@pytest.mark.parametrize("name", [SECRET_FILE, AGREEMENT_FILE])
def test_a_group_readable_secret_key_is_refused(tmp_path, name: str) -> None:  # type: ignore[no-untyped-def]
    load_or_create_keys(8, None, tmp_path, persist=True)
    (tmp_path / name).chmod(0o640)
    with pytest.raises(PermissionError, match="chmod 600"):
        load_or_create_keys(8, None, tmp_path, persist=True)


def test_impossible_bits_are_refused_at_start_up(tmp_path) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(CkksParameterError, match="at most 10 bits per field"):
        load_or_create_keys(8, 12, tmp_path, persist=False)


def test_a_persisted_key_made_for_another_consortium_size_is_refused(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """A key authority restarted with a larger consortium would decode sums at the wrong scale: it says so."""
    load_or_create_keys(8, None, tmp_path, persist=True)
    with pytest.raises(ValueError, match="does not fit these settings.*1000 participants"):
        load_or_create_keys(1000, None, tmp_path, persist=True)
    assert load_or_create_keys(8, None, tmp_path, persist=True).params.scale == 262144.0
