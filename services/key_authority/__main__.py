"""Run the key authority: `python -m services.key_authority [--config FILE]`.

Settings come from FEDXRAY_KA_* environment variables or an env file; `--help`
lists them.
"""

from __future__ import annotations

from services.common.runtime.settings_loader import load_settings
from services.key_authority.config import KeyAuthoritySettings


def main(argv: list[str] | None = None) -> None:
    settings = load_settings(KeyAuthoritySettings, "services.key_authority", __doc__, argv=argv)
    from services.key_authority.service import serve  # TenSEAL loads here, after the settings are checked

    serve(settings)


if __name__ == "__main__":
    main()
