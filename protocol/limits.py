"""Limits of the wire protocol, shared by the daemon and the clients."""

from typing import Final

PROTOCOL_VERSION: Final = 1
DEFAULT_PORT: Final = 7717
DEFAULT_HOST: Final = "127.0.0.1"
#: Frames larger than this close the connection with code 1009.
MAX_FRAME_BYTES: Final = 16 * 1024 * 1024
#: Events in one append; more is `too_large`.
MAX_EVENTS_PER_APPEND: Final = 10_000
MAX_ID_CHARS: Final = 128
MAX_RUN_CHARS: Final = 128
MAX_NAME_CHARS: Final = 250
#: Nesting depth of free-form values (`config`, `item.data`, cache values).
MAX_DEPTH: Final = 64
MAX_QUERY_LIMIT: Final = 10_000
