import stat as st

import pytest

from buildkitpy.fsutil import modes


@pytest.mark.parametrize(("posix", "go"), [
    (st.S_IFREG | 0o644, 0o644),
    (st.S_IFDIR | 0o755, modes.MODE_DIR | 0o755),
    (st.S_IFLNK | 0o777, modes.MODE_SYMLINK | 0o777),
    (st.S_IFREG | st.S_ISUID | 0o755, modes.MODE_SETUID | 0o755),
    (st.S_IFDIR | st.S_ISGID | 0o2775 & 0o777, modes.MODE_DIR | modes.MODE_SETGID | 0o775),
    (st.S_IFDIR | st.S_ISVTX | 0o777, modes.MODE_DIR | modes.MODE_STICKY | 0o777),
    (st.S_IFCHR | 0o620, modes.MODE_DEVICE | modes.MODE_CHAR_DEVICE | 0o620),
    (st.S_IFBLK | 0o660, modes.MODE_DEVICE | 0o660),
    (st.S_IFIFO | 0o600, modes.MODE_NAMED_PIPE | 0o600),
    (st.S_IFSOCK | 0o755, modes.MODE_SOCKET | 0o755),
    (st.S_IFREG, 0),
])
def test_posix_go_round_trip(posix, go):
    assert modes.go_mode_from_posix(posix) == go
    assert modes.posix_mode_from_go(go) == posix


def test_go_bit_values_match_go_os_filemode():
    assert modes.MODE_DIR == 0x80000000
    assert modes.MODE_SYMLINK == 0x08000000
    assert modes.MODE_SETUID == 0x00800000
    assert modes.MODE_SETGID == 0x00400000
    assert modes.MODE_STICKY == 0x00100000
    assert modes.MODE_CHAR_DEVICE == 0x00200000
    assert modes.MODE_IRREGULAR == 0x00080000


def test_regular_means_no_type_bits():
    assert modes.is_regular(0o644 | modes.MODE_SETUID)
    for bit in (modes.MODE_DIR, modes.MODE_SYMLINK, modes.MODE_DEVICE, modes.MODE_NAMED_PIPE,
                modes.MODE_SOCKET, modes.MODE_IRREGULAR):
        assert not modes.is_regular(bit | 0o644)
    assert modes.posix_mode_from_go(modes.MODE_IRREGULAR | 0o600) == st.S_IFREG | 0o600
